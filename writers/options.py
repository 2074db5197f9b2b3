"""The writer's options and limits, checked before any work (one place for the API, the CLI and the dry run)."""

from __future__ import annotations

import math
import operator

import numpy as np

from writers.encode import MODES

#: Default JPEG quality: see the PSNR/size table in the docs (``jit-ffcv bench --quality-table``).
DEFAULT_QUALITY = 90
#: Images per task sent to a worker process.
CHUNK = 16
#: FFCV's page size for our betons (DatasetWriter's default); one sample must fit in a page.
PAGE_SIZE = 8 << 20
#: Largest crop: JiT trains at 256 and 512. A worker holds the upscaled source and a few copies of
#: the crop (48 MiB each at 4096 px, RGB); an unbounded size drove one worker to 23.6 GB at 100000.
MAX_IMG_SIZE = 4096
#: Largest raw crop: its 3 * size**2 bytes must fit in one FFCV page.
MAX_RAW_IMG_SIZE = math.isqrt(PAGE_SIZE // 3)


def integer_option(name: str, value: object, low: int, high: int | None = None, hint: str = "") -> int:
    """``value`` as a Python int in ``[low, high]`` (NumPy integers welcome, booleans refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got the boolean {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}{hint}") from None
    if number < low or (high is not None and number > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {number}{hint}")
    return number


def validate_options(
    img_size: object, mode: str, quality: object, num_workers: object, limit: object = None
) -> tuple[int, int, int, int | None]:
    """Check the options before any work; return ``(img_size, quality, num_workers, limit)`` as Python ints."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    high = MAX_RAW_IMG_SIZE if mode == "raw" else MAX_IMG_SIZE
    why = (" (a raw crop must fit one 8 MiB FFCV page; use --mode jpg)" if mode == "raw"
           else " (memory per worker grows with its square)")
    img_size = integer_option("img_size", img_size, 32, high, why)
    quality = integer_option("quality", quality, 1, 100)
    num_workers = integer_option("num_workers", num_workers, 0, hint=" (0 = in this process)")
    if limit is not None:
        limit = integer_option("limit", limit, 1, hint=" (None, or no --limit, writes every image)")
    return img_size, quality, num_workers, limit
