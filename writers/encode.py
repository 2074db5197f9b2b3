"""Per-image work of the writer: decode, convert to RGB, ADM crop, encode.

Runs in the writer's worker processes, so it imports only Pillow and NumPy
(no torch, no FFCV), which keeps worker processes light.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from writers.checksum import payload_checksum
from writers.crop import center_crop_arr

MODES: tuple[str, ...] = ("raw", "jpg")
#: Why a file Pillow cannot identify is skipped (Pillow's own message names an anonymous file object).
UNIDENTIFIED = "cannot identify image file (not an image format Pillow reads)"


@dataclass(frozen=True)
class Encoded:
    """One processed sample: the stored bytes, or the reason it was skipped."""

    index: int
    label: int
    payload: bytes | None
    error: str | None = None
    checksum: int | None = None  # payload_checksum(payload), computed here: the workers share the cost


class NotARegularFileError(OSError):
    """A path named like an image is a FIFO, a device or a socket: reading it could block forever."""


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB, as torchvision's ``pil_loader`` does; refuse non-regular files.

    The file is opened non-blocking and checked with ``fstat`` before any read, so a FIFO
    named ``x.JPEG`` is reported instead of hanging the writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(f"not a regular file ({_file_kind(mode)})")
        try:
            img = Image.open(f)
        except UnidentifiedImageError:  # Pillow names the file object ('<_io.BufferedReader name=24>'), not the file
            raise UnidentifiedImageError(UNIDENTIFIED) from None
        return img.convert("RGB")


def _file_kind(mode: int) -> str:
    """Human name of a non-regular file type."""
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"))
    return next((name for test, name in kinds if test(mode)), "special file")


def crop_file(path: str, img_size: int) -> np.ndarray:
    """The reference pixels of one file: ``center_crop_arr(load_rgb(path))`` as HWC uint8."""
    return np.asarray(center_crop_arr(load_rgb(path), img_size))


def encode_jpeg(pixels: np.ndarray, quality: int, subsampling: str = "4:2:0") -> bytes:
    """Baseline JPEG (libjpeg-turbo via Pillow) of an RGB array; the writer stores 4:2:0."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def encode_file(index: int, path: str, label: int, img_size: int, mode: str, quality: int) -> Encoded:
    """Crop and encode one file; any decoding error becomes ``Encoded.error``."""
    try:
        pixels = crop_file(path, img_size)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal here
        return Encoded(index, label, None, f"{type(exc).__name__}: {exc}")
    payload = pixels.tobytes() if mode == "raw" else encode_jpeg(pixels, quality)
    return Encoded(index, label, payload, checksum=payload_checksum(payload))


def encode_chunk(
    tasks: Sequence[tuple[int, str, int]], img_size: int, mode: str, quality: int
) -> list[Encoded]:
    """Worker entry point: encode a chunk of ``(index, path, label)`` tasks in order."""
    return [encode_file(i, path, label, img_size, mode, quality) for i, path, label in tasks]
