"""A captioned PNG grid of decoded samples (``jit-ffcv show``, ``jit-ffcv trace --png``, the demo's batch.png)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["GridLayout", "Sample", "caption", "grid_layout", "render_grid"]

GAP = 4  # pixels between tiles and around the grid
MIN_CELL_WIDTH = 180  # room for a caption under small images
CAPTION_HEIGHT = 30  # two lines of Pillow's default font
LINE_STEP = 13
BACKGROUND, INK = (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class Sample:
    """One decoded sample as the val loader delivers it (HxWx3 uint8, never flipped)."""

    sample_id: int  # position in the beton
    index: int | None  # ImageFolder index of its file (None: beton written without the index field)
    label: int
    class_name: str
    image: np.ndarray


def caption(sample: Sample) -> tuple[str, str]:
    """Two caption lines: class folder name and label; stored sample id and ImageFolder index."""
    source = "" if sample.index is None else f", folder idx {sample.index}"
    return f"{sample.class_name} (label {sample.label})", f"sample {sample.sample_id}{source}"


@dataclass(frozen=True)
class GridLayout:
    """Where each tile goes: ``cols`` x ``rows`` cells of ``cell_width`` x (image + caption) pixels."""

    img_size: int
    count: int

    @property
    def cols(self) -> int:
        """Columns: about the square root of the tile count."""
        return math.ceil(math.sqrt(self.count))

    @property
    def rows(self) -> int:
        """Rows needed for every tile."""
        return math.ceil(self.count / self.cols)

    @property
    def cell_width(self) -> int:
        """A tile's width: the image's, or more to leave room for its caption."""
        return max(self.img_size, MIN_CELL_WIDTH)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole grid."""
        cell_height = self.img_size + CAPTION_HEIGHT
        return (self.cols * (self.cell_width + GAP) + GAP, self.rows * (cell_height + GAP) + GAP)

    def origin(self, k: int) -> tuple[int, int]:
        """Top-left pixel (x, y) of tile ``k``'s image (centred in its cell, caption below)."""
        row, col = divmod(k, self.cols)
        x = GAP + col * (self.cell_width + GAP) + (self.cell_width - self.img_size) // 2
        return x, GAP + row * (self.img_size + CAPTION_HEIGHT + GAP)


def grid_layout(count: int, img_size: int) -> GridLayout:
    """The layout of ``count`` tiles of ``img_size`` pixels (about square)."""
    return GridLayout(img_size=img_size, count=count)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text``, cut with ``...`` until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def render_grid(samples: Sequence[Sample],
                captions: Sequence[tuple[str, str]] | None = None) -> tuple[Image.Image, GridLayout]:
    """Paste the images unchanged, each with its caption (Pillow's default font; :func:`caption` unless given)."""
    img_size = samples[0].image.shape[0]
    layout = grid_layout(len(samples), img_size)
    grid = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for k, sample in enumerate(samples):
        x, y = layout.origin(k)
        grid.paste(Image.fromarray(sample.image), (x, y))
        left = x - (layout.cell_width - img_size) // 2 + 2
        for line_no, text in enumerate(caption(sample) if captions is None else captions[k]):
            draw.text((left, y + img_size + 2 + line_no * LINE_STEP), _fit(draw, text, layout.cell_width - 4, font),
                      fill=INK, font=font)
    return grid, layout
