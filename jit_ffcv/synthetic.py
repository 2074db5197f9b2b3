"""A small synthetic ImageFolder with the awkward cases real datasets contain.

Used by the tests and as the demo's default dataset: varied sizes and aspect
ratios (smaller than the crop, very wide, very tall), grayscale, CMYK, palette
and RGBA images, a PNG named ``.JPEG``, and broken files (truncated, empty, not
an image) that the writer must skip and report.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: A real ImageNet-layout sample used by the demo, the benchmark and some tests when present: ``$JIT_FFCV_SAMPLE``,
#: else ``shared/data/imagenet-sample`` beside the checkout.
SHARED_SAMPLE = Path(os.environ.get("JIT_FFCV_SAMPLE")
                     or Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample")

#: (width, height, PIL mode, format, extension) cycled over the images of each class
_KINDS: tuple[tuple[int, int, str, str, str], ...] = (
    (320, 240, "RGB", "JPEG", ".JPEG"),
    (48, 40, "RGB", "JPEG", ".jpg"),  # smaller than any crop size
    (900, 120, "RGB", "PNG", ".png"),  # very wide
    (110, 700, "L", "JPEG", ".jpeg"),  # very tall, grayscale
    (500, 375, "CMYK", "JPEG", ".JPEG"),
    (256, 256, "RGBA", "PNG", ".png"),
    (333, 500, "P", "PNG", ".PNG"),
    (300, 300, "RGB", "PNG", ".JPEG"),  # a PNG named .JPEG, as in ImageNet
    (1024, 768, "RGB", "JPEG", ".JPEG"),
    (129, 257, "RGB", "BMP", ".bmp"),
)


@dataclass
class SyntheticFolder:
    """Where the synthetic dataset is and which of its files are broken on purpose."""

    root: Path
    classes: list[str]
    broken: list[str] = field(default_factory=list)  # image-named files that cannot be decoded
    non_images: list[str] = field(default_factory=list)  # files ImageFolder ignores by extension
    val_classes: list[str] = field(default_factory=list)


def _pixels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour gradients plus mild noise: compresses like a photo, not like noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    freq = rng.uniform(0.5, 2.0, size=3) / max(width, height)
    channels = [127 + 100 * np.sin(freq[c] * (x * (c + 1) + y * (3 - c)) * np.pi + phase[c]) for c in range(3)]
    img = np.stack(channels, axis=-1) + rng.normal(0, 3, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray, mode: str, fmt: str) -> None:
    img = Image.fromarray(pixels)
    if mode == "P":
        img = img.quantize(colors=64)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    path.write_bytes(buf.getvalue())


def make_image_folder(
    root: str | Path, *, num_classes: int = 4, per_class: int = 5, seed: int = 0, broken: bool = True, val: bool = True
) -> SyntheticFolder:
    """Write ``root/train/<class>/...`` (and ``root/val``) and describe it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = [f"n{c:08d}" for c in range(num_classes)]
    out = SyntheticFolder(root=root, classes=classes)
    splits = {"train": classes}
    if val:
        out.val_classes = classes[::2]  # val lacks every other class: indices must not shift
        splits["val"] = out.val_classes
    k = 0
    for split, split_classes in splits.items():
        n = per_class if split == "train" else max(1, per_class // 2)
        for name in split_classes:
            class_dir = root / split / name
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                width, height, mode, fmt, ext = _KINDS[k % len(_KINDS)]
                k += 1
                _save(class_dir / f"{name}_{i:04d}{ext}", _pixels(rng, width, height), mode, fmt)
    if broken:
        first = root / "train" / classes[0]
        good = next(iter(sorted(first.glob("*.JPEG"))))
        truncated = first / "zz_truncated.JPEG"
        truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
        empty = root / "train" / classes[-1] / "zz_empty.jpg"
        empty.write_bytes(b"")
        text_as_image = root / "train" / classes[-1] / "zz_not_an_image.JPEG"
        text_as_image.write_text("this is not a JPEG\n")
        notes = first / "README.txt"
        notes.write_text("ImageFolder ignores this file by its extension\n")
        out.broken = sorted(str(p) for p in (truncated, empty, text_as_image))
        out.non_images = [str(notes)]
    return out
