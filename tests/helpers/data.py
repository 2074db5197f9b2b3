"""Data the tests share: the synthetic crop size, the real sample, a beton read back by FFCV alone, polling."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jit_ffcv.synthetic import SHARED_SAMPLE
from writers.beton import read_payloads

SMALL = 64  # crop size used for the synthetic betons: small enough to keep tests fast


def shared_sample() -> Path:
    """The real ImageNet sample beside the checkout; tests that need it skip (with reason) without it."""
    root = Path(os.environ.get("JIT_FFCV_SAMPLE", SHARED_SAMPLE))
    if not (root / "train").is_dir():
        pytest.skip(f"real ImageNet sample not found at {root}/train (set JIT_FFCV_SAMPLE)")
    return root


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_beton(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All images (N,H,W,3 uint8) and labels of a beton, in stored order, via FFCV's Loader."""
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    n = int(Reader(str(path)).num_samples)
    loader = Loader(
        str(path), batch_size=n, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "index": None, "checksum": None},
    )
    (images, labels), = list(loader)
    return np.array(images), np.array(labels).reshape(-1)


def pillow_images(beton: Path) -> np.ndarray:
    """``PIL.Image.open(BytesIO(stored bytes)).convert("RGB")`` of every sample, stacked (N,H,W,3)."""
    payloads, _ = read_payloads(beton)
    return np.stack([np.array(Image.open(BytesIO(p)).convert("RGB")) for p in payloads])
