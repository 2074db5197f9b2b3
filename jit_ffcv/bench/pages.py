"""Pages each rank reads per epoch: quasi-random order vs a strided DistributedSampler."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jit_ffcv.imagenet import SAMPLES_PER_PAGE, TRAIN_SAMPLES


def pages_report(beton: Path | None, worlds: Sequence[int] = (1, 2, 8), seed: int = 0) -> str:
    """Markdown table: pages each rank reads per epoch, quasi-random vs DistributedSampler-style.

    Uses the page of every sample in ``beton`` if given, and a simulated ImageNet-1k
    train beton (1,281,167 samples, 380 per 8 MiB page, about 22 KiB each at 256 q90).
    """
    from jit_ffcv.locality import max_open_pages, pages_touched
    from jit_ffcv.order import epoch_order
    from jit_ffcv.traversal import reader_sample_pages
    from writers.ffcv_api import Reader

    layouts: list[tuple[str, np.ndarray]] = []
    if beton is not None:
        page = reader_sample_pages(Reader(str(beton)))
        layouts.append((f"{beton.name} ({len(page):,} samples)", page))
    simulated = np.arange(TRAIN_SAMPLES) // SAMPLES_PER_PAGE
    layouts.append((f"simulated ImageNet-1k 256 q90 ({TRAIN_SAMPLES:,} samples)", simulated))
    rows = ["| beton | W | pages in file | quasi-random: pages per rank (max) | max open pages | "
            "strided DistributedSampler: pages per rank |", "|---|---|---|---|---|---|"]
    for name, page in layouts:
        indices = np.arange(len(page))
        total = len(np.unique(page))
        for w in worlds:
            quasi = [epoch_order(page, indices, kind="quasi_random", num_replicas=w, rank=r, seed=seed, epoch=0,
                                 buffer_pages=256) for r in range(w)]
            perm = np.random.default_rng(seed).permutation(len(page))
            strided = [perm[r::w] for r in range(w)]  # torch DistributedSampler: indices[rank::W]
            rows.append(f"| {name} | {w} | {total:,} | {max(pages_touched(o, page) for o in quasi):,} | "
                        f"{max(max_open_pages(o, page) for o in quasi):,} | "
                        f"{max(pages_touched(o, page) for o in strided):,} |")
    return "\n".join(rows)
