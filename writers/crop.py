"""The ADM centre crop that JiT's reference loader applies to every image.

This is the one transform the writer bakes into the beton, so it must match the
reference pixel for pixel: repeated 2x BOX downsampling while the short side is
at least twice the target, one BICUBIC resize of the short side to the target
(sizes rounded with Python's ``round``), then a centre crop.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """Return the ``image_size`` x ``image_size`` ADM centre crop of ``pil_image``.

    Same contract as ``center_crop_arr`` in guided-diffusion / JiT: the input is a
    PIL image (RGB in practice) and the output is a PIL image of the same mode.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    while min(*pil_image.size) >= 2 * image_size:
        half = tuple(side // 2 for side in pil_image.size)
        pil_image = pil_image.resize(half, resample=Image.BOX)

    scale = image_size / min(*pil_image.size)
    new_size = tuple(round(side * scale) for side in pil_image.size)
    pil_image = pil_image.resize(new_size, resample=Image.BICUBIC)

    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])
