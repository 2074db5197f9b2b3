"""ImageNet-scale measurements (``jit-ffcv bench --scale``): what must not grow with N.

On the ImageNet-size beton of :mod:`jit_ffcv.bench.scale_beton`: writer memory, ``setup``, loader
construction, the order of an epoch, resume latency, loader memory and pages per rank.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jit_ffcv.bench.scale_beton import BATCH_SIZE, scale_datamodule, source_beton
from jit_ffcv.bench.spawn import spawn
from jit_ffcv.imagenet import TRAIN_SAMPLES as IMAGENET_TRAIN

WORLDS: tuple[int, ...] = (1, 8, 64)


def _best(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def resume_seconds(beton: Path, world: int, new_world: int, workers: int) -> float:
    """Seconds from ``load_state_dict`` to the resumed epoch's first order, last rank of ``new_world``.

    The state is the middle of epoch 3 at ``world`` ranks (what a checkpoint holds).
    """
    from jit_ffcv.order import samples_per_rank
    from jit_ffcv.resume import Position

    def loader(w: int) -> Any:
        dm = scale_datamodule(beton, w, w - 1, workers)
        dm.setup("fit")
        return dm.train_dataloader()

    old = loader(world)
    steps = samples_per_rank(len(old.traversal_order.indices), world) // BATCH_SIZE
    state = Position(3, [], world, 0, steps * BATCH_SIZE, steps // 2).state(old.resume_spec())
    fresh = [loader(new_world) for _ in range(3)]

    def resume() -> None:
        new = fresh.pop()
        with warnings.catch_warnings():  # elastic resume warns that the epoch length changes: expected
            warnings.simplefilter("ignore")
            new.load_state_dict(state)
        new.next_traversal_order()

    return _best(resume)


def pages_rows(pages: np.ndarray, worlds: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(W, pages in file, quasi-random pages per rank (max), max open pages) for each W."""
    from jit_ffcv.locality import max_open_pages, pages_touched
    from jit_ffcv.order import epoch_orders

    indices, total, rows = np.arange(len(pages)), len(np.unique(pages)), []
    for w in worlds:
        orders = epoch_orders(pages, indices, kind="quasi_random", num_replicas=w, seed=0, epoch=0,
                              buffer_pages=2 * BATCH_SIZE)
        rows.append((w, total, max(pages_touched(o, pages) for o in orders),
                     max(max_open_pages(o, pages) for o in orders)))
    return rows


@dataclass
class Row:
    """One line of the table."""

    what: str
    value: str
    note: str = ""


def measure(beton: Path, small: Path | None, src: Path, args: argparse.Namespace) -> list[Row]:
    """Build (unless cached) and measure; returns the table rows."""
    from jit_ffcv.order import epoch_order
    from jit_ffcv.traversal import reader_sample_pages
    from writers.ffcv_api import Reader

    rows: list[Row] = []
    peaks: dict[int, float] = {}
    for path, n in ((small, max(1, args.scale_samples // 10)), (beton, args.scale_samples)):
        if path is None:
            continue
        record = path.with_name(path.name + ".build.json")  # the build's measurements, kept with the beton
        cached = path.exists() and record.exists()
        if not cached:
            path.unlink(missing_ok=True)
            r = spawn({"kind": "build", "src": str(src), "out": str(path), "num_samples": n}, timeout=3600)
            record.write_text(json.dumps({**r, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
        r = json.loads(record.read_text())
        when = f" (built {r['when']}, reused: delete it to re-measure)" if cached else ""
        peaks[n] = r["peak_rss_mib"]
        rows.append(Row(f"build N={n:,}", f"{r['seconds']:.1f} s",
                        f"{r['size_bytes'] / 2**30:.2f} GiB, {r['size_bytes'] / r['copy_seconds'] / 2**20:,.0f} MiB/s "
                        f"copying (the rest: SHA-256 and publishing){when}"))
        rows.append(Row(f"writer peak RSS N={n:,}", f"{r['peak_rss_mib']:,.0f} MiB",
                        f"sampled every 0.1 s; {r['rss_before_mib']:,.0f} MiB before the write"))
    if len(peaks) == 2:
        (n1, p1), (n2, p2) = sorted(peaks.items())
        rows.append(Row("writer memory per sample", f"{(p2 - p1) * 2**20 / (n2 - n1):,.0f} B",
                        "slope of the peak between the two builds: FFCV's per-sample metadata and allocation "
                        "tables (numpy), no Python object per sample"))
    n = args.scale_samples
    dm = scale_datamodule(beton, 8, 7, args.workers)
    rows.append(Row("DataModule.setup()", f"{_best(lambda: dm.setup('fit')):.3f} s",
                    "sidecar, size check, header check over all samples"))
    rows.append(Row("train_dataloader() (W=8, rank 7)", f"{_best(dm.train_dataloader):.3f} s",
                    "mostly FFCV's MemoryManager, which builds Python dicts/sets over all samples (not fixed)"))
    pages = reader_sample_pages(Reader(str(beton)))
    for w in WORLDS:
        secs = _best(lambda w=w: epoch_order(pages, np.arange(n), kind="quasi_random", num_replicas=w, rank=w - 1,
                                         seed=0, epoch=3, buffer_pages=2 * BATCH_SIZE))
        rows.append(Row(f"quasi_random order of one epoch, W={w}", f"{secs:.3f} s", "one rank (the last)"))
    rows.append(Row("resume, same world W=8", f"{resume_seconds(beton, 8, 8, args.workers):.3f} s",
                    "load_state_dict -> first order, mid-epoch state"))
    rows.append(Row("resume, elastic W=8->4", f"{resume_seconds(beton, 8, 4, args.workers):.3f} s",
                    "recomputes all 8 old orders, re-shards the rest"))
    for os_cache in (False, True):
        r = spawn({"kind": "load", "beton": str(beton), "workers": args.workers, "os_cache": os_cache,
                   "batches": args.scale_batches}, timeout=3600)
        rows.append(Row(f"loader peak RSS, os_cache={os_cache}", f"{r['peak_rss_mib']:,.0f} MiB",
                        f"{r['batches']} batches of {BATCH_SIZE} at W=1, {args.workers} workers, "
                        f"{r['img_per_s']:,.0f} img/s"))
    for w, total, per_rank, open_pages in pages_rows(pages, WORLDS):
        rows.append(Row(f"pages per rank, W={w}", f"{per_rank:,} of {total:,}",
                        f"quasi-random, max over ranks; at most {open_pages:,} open at once"))
    return rows


def markdown(rows: list[Row], n: int, source: str, workers: int) -> str:
    """The table plus lines saying what was measured on what machine."""
    from jit_ffcv.bench.machine import describe, machine_info

    lines = [f"| measurement (N = {n:,}) | value | note |", "|---|---|---|"]
    lines += [f"| {r.what} | {r.value} | {r.note} |" for r in rows]
    lines.append("")
    lines.append(f"Payloads of {source}; best of 3 for in-process timings.")
    lines.append(describe(machine_info(workers)))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--scale`` and its options on ``jit-ffcv bench``'s parser."""
    p.add_argument("--scale", action="store_true",
                   help=f"only the ImageNet-scale measurements: builds OUT/betons/imagenet_scale_N.beton "
                        f"({IMAGENET_TRAIN:,} samples, about 28 GB at 256 px q90, plus one of N/10 samples, "
                        f"2.8 GB) unless it exists, at copy speed")
    p.add_argument("--scale-samples", type=int, default=IMAGENET_TRAIN,
                   help="samples of the --scale beton (default: ImageNet-1k train)")
    p.add_argument("--scale-batches", type=int, default=200, help="batches per loader-RSS run of --scale")
    return p


def main(args: argparse.Namespace) -> int:
    """Build the ImageNet-size beton (cached under ``--out``), measure, print; with --doc, its scale block."""
    from jit_ffcv.bench.report import update_doc

    if args.scale_samples < 1 or args.scale_batches < 1:
        raise ValueError(f"--scale-samples and --scale-batches must be >= 1, got {args.scale_samples} "
                         f"and {args.scale_batches}")
    out = Path(args.out)
    work = out / "betons"
    work.mkdir(parents=True, exist_ok=True)
    src, source = source_beton(args.data_path, work, args.workers)
    n = args.scale_samples
    beton = work / f"imagenet_scale_{n}.beton"
    small = work / f"imagenet_scale_{max(1, n // 10)}.beton" if n >= 10 else None
    table = markdown(measure(beton, small, src, args), n, source, args.workers)
    print(table)
    (out / "scale.md").write_text(table + "\n")
    if args.doc:
        update_doc(Path(args.doc), args.tag or "scale", table)
    return 0

