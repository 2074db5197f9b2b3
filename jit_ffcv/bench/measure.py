"""Timing: steady epochs of a loader, and the writer's rate per worker count."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from writers.beton import write_beton
from writers.folder import FolderScan


def writer_rates(scan: FolderScan, img_size: int, work: Path, workers: Sequence[int],
                 min_images: int = 900) -> dict[int, float]:
    """Writer img/s (jpg q90, whole run: pool start, crop, encode, write, SHA-256) per worker count."""
    times = -(-min_images // len(scan.samples))
    scan = FolderScan(scan.root, scan.classes, scan.samples * times, scan.ignored)
    rates = {}
    for n in workers:
        meta = write_beton(scan, work / f"writer_{img_size}_{n}.beton", img_size=img_size, mode="jpg", quality=90,
                           num_workers=n, progress=False, force=True)  # re-measured on every run
        rates[n] = meta.images_per_second
    return rates


def time_epochs(iterate_epoch: Callable[[int], int], epochs: int, min_seconds: float) -> tuple[float, float]:
    """(first epoch seconds, steady img/s over at least ``epochs - 1`` epochs and ``min_seconds``)."""
    start = time.perf_counter()
    iterate_epoch(0)
    first = time.perf_counter() - start
    images, epoch, start = 0, 1, time.perf_counter()
    while epoch < epochs or time.perf_counter() - start < min_seconds:
        images += iterate_epoch(epoch)
        epoch += 1
    return first, images / (time.perf_counter() - start)
