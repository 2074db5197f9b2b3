"""center_crop_arr: the exact ADM reference semantics."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jit_ffcv import center_crop_arr


def _reference_steps(img: Image.Image, size: int) -> np.ndarray:
    """The ADM crop written out step by step, independently of the library code."""
    w, h = img.size
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        img = img.resize((w, h), resample=Image.BOX)
    s = size / min(w, h)
    img = img.resize((round(w * s), round(h * s)), resample=Image.BICUBIC)
    a = np.array(img)
    y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[y0 : y0 + size, x0 : x0 + size]


@pytest.mark.parametrize("wh", [(2400, 1600), (75, 56), (1000, 90), (90, 1000), (256, 256), (511, 1024), (333, 500)])
@pytest.mark.parametrize("size", [32, 64, 256])
def test_matches_reference_and_shape(wh: tuple[int, int], size: int) -> None:
    rng = np.random.default_rng(wh[0] * 7 + wh[1])
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    out = center_crop_arr(img, size)
    assert isinstance(out, Image.Image) and out.size == (size, size) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), _reference_steps(img, size))


def test_box_halving_happens_before_bicubic() -> None:
    # 1024 -> 512 -> 256 by BOX; a single BICUBIC resize would give other pixels
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    boxed = np.asarray(img.resize((512, 512), Image.BOX).resize((256, 256), Image.BOX))
    np.testing.assert_array_equal(np.asarray(center_crop_arr(img, 256)), boxed)


def test_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        center_crop_arr(Image.new("RGB", (10, 10)), 0)
