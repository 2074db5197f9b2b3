"""ImageNet-scale measurements (``jit-ffcv bench --scale``).

Builds an ImageNet-1k-sized train beton (1,281,167 samples, 1,000 classes laid out as ImageFolder
would, stored in the writer's shuffled order) by copying real 256 px q90 payloads, without
decoding, and measures what must not grow with N: writer memory, ``setup``, loader
construction, the order of an epoch, resume latency, loader memory and pages per rank.
Each build and each loader run happens in a fresh child process, so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


from jit_ffcv.imagenet import NUM_CLASSES as IMAGENET_CLASSES
from jit_ffcv.imagenet import TRAIN_SAMPLES as IMAGENET_TRAIN

BATCH_SIZE: int = 128
WORLDS: tuple[int, ...] = (1, 8, 64)


# --------------------------------------------------------------------------- building
def imagenet_labels(num_samples: int, num_classes: int = IMAGENET_CLASSES) -> np.ndarray:
    """ImageFolder label of each folder index: classes in order, sizes as equal as possible (first ones +1)."""
    counts = np.full(num_classes, num_samples // num_classes, dtype=np.int64)
    counts[:num_samples % num_classes] += 1
    return np.repeat(np.arange(num_classes, dtype=np.int64), counts)


def build_scale_beton(src: Path, out: Path, num_samples: int, seed: int = 0) -> Any:
    """Write ``out``: ``num_samples`` samples copied from ``src``'s payloads, ImageNet's class layout, shuffled.

    Stored position ``p`` holds folder index ``perm[p]`` (``sample_permutation(N, seed)``, as the
    writer stores a real dataset), labelled with the simulated ImageFolder class of that index; its
    payload is ``src``'s sample ``perm[p] % len(src)``. No decoding: pages are filled by memory copies
    and written 8 MiB at a time. Returns the published sidecar's metadata.
    """
    from writers.shuffle import sample_permutation
    from writers.beton import _partial_beton, _publish, read_payloads
    from writers.metadata import BetonMetadata, file_sha256, read_metadata

    if num_samples < 1:
        raise ValueError(f"--scale-samples must be >= 1, got {num_samples!r}")
    src_meta = read_metadata(src)
    payloads, _ = read_payloads(src)
    labels = imagenet_labels(num_samples)
    perm = sample_permutation(num_samples, seed)
    start = time.perf_counter()
    with _partial_beton(out, num_samples, src_meta.mode, src_meta.quality or 90) as beton:
        for chunk in np.array_split(perm, max(1, num_samples // 65536)):  # no N-long Python list
            for index, label in zip(chunk.tolist(), labels[chunk].tolist()):
                beton.append(payloads[index % len(payloads)], label, src_meta.img_size, index)
    seconds = time.perf_counter() - start
    partial = beton.path
    meta = BetonMetadata(
        split="train", img_size=src_meta.img_size, mode=src_meta.mode, quality=src_meta.quality,
        classes=[f"n{c:08d}" for c in range(IMAGENET_CLASSES)],
        class_counts=np.bincount(labels, minlength=IMAGENET_CLASSES).tolist(), num_samples=beton.count,
        source=f"{src_meta.source} (payloads replicated to ImageNet-1k size by jit_ffcv.bench.scale)",
        sha256=file_sha256(partial), size_bytes=partial.stat().st_size, payload_bytes=beton.payload_bytes,
        seconds=seconds, images_per_second=beton.count / max(seconds, 1e-9), num_workers=1,
        writer_version=src_meta.writer_version, sample_order="shuffled", shuffle_seed=seed,
    )
    _publish(partial, out, meta)
    return meta


def source_beton(data_path: str | None, work: Path, workers: int) -> tuple[Path, str]:
    """A 256 px q90 beton of the real sample (else of the synthetic folder), written once into ``work``."""
    from jit_ffcv.bench.data import build_betons, dataset_scan

    scan, source = dataset_scan(data_path, work)
    return build_betons(scan, 256, ["jpg90"], 1, work, workers, progress=False)["jpg90"], source


# --------------------------------------------------------------------------- child processes
def _own_peak_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    from jit_ffcv.bench.measure import _own_peak_mib as peak

    return peak()


def _rss_mib() -> float:
    """This process's current resident memory (VmRSS) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child_build(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build in this process, sampling its RSS every 0.1 s (FFCV's import peaks higher than a small write)."""
    import threading

    import writers.ffcv_api  # noqa: F401 - imports (numba compilation) done before the baseline
    from writers.beton import read_payloads

    read_payloads(cfg["src"])
    before, peak, stop = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], _rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    meta = build_scale_beton(Path(cfg["src"]), Path(cfg["out"]), cfg["num_samples"])
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    return {"seconds": seconds, "copy_seconds": meta.seconds, "rss_before_mib": before,
            "peak_rss_mib": max(peak[0], _rss_mib()), "size_bytes": meta.size_bytes}


def _datamodule(beton: Path, world: int, rank: int, workers: int, os_cache: bool = True) -> Any:
    from jit_ffcv import JiTDataModule

    return JiTDataModule(str(beton.parent), img_size=256, batch_size=BATCH_SIZE, num_workers=workers,
                         pin_memory=False, num_replicas=world, rank=rank, train_beton=str(beton),
                         val_beton=str(beton.parent / "no_val.beton"), os_cache=os_cache)


def _child_load(cfg: dict[str, Any]) -> dict[str, Any]:
    dm = _datamodule(Path(cfg["beton"]), 1, 0, cfg["workers"], os_cache=cfg["os_cache"])
    dm.setup("fit")
    loader = dm.train_dataloader()
    start, seen = time.perf_counter(), 0
    for i, (images, _) in enumerate(loader):
        seen += len(images)
        if i + 1 == cfg["batches"]:
            break
    return {"img_per_s": seen / (time.perf_counter() - start), "peak_rss_mib": _own_peak_mib(), "batches": i + 1}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"build": _child_build, "load": _child_load}


def spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run ``CHILDREN[cfg['kind']]`` in a fresh interpreter and return its JSON result."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "jit_ffcv.bench.scale", json.dumps(cfg)],
                          capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scale child {cfg['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- in-process measurements
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
        dm = _datamodule(beton, w, w - 1, workers)
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
    from jit_ffcv.order import epoch_orders, max_open_pages, pages_touched

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
    from writers.ffcv_api import Reader
    from jit_ffcv.order import epoch_order, reader_sample_pages

    rows: list[Row] = []
    peaks: dict[int, float] = {}
    for path, n in ((small, max(1, args.scale_samples // 10)), (beton, args.scale_samples)):
        if path is None:
            continue
        record = path.with_name(path.name + ".build.json")  # the build's measurements, kept with the beton
        cached = path.exists() and record.exists()
        if not cached:
            path.unlink(missing_ok=True)
            r = spawn({"kind": "build", "src": str(src), "out": str(path), "num_samples": n})
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
    dm = _datamodule(beton, 8, 7, args.workers)
    rows.append(Row("DataModule.setup()", f"{_best(lambda: dm.setup('fit')):.3f} s",
                    "sidecar, size check, header check over all samples"))
    rows.append(Row("train_dataloader() (W=8, rank 7)", f"{_best(dm.train_dataloader):.3f} s",
                    "mostly FFCV's MemoryManager, which builds Python dicts/sets over all samples (not fixed)"))
    pages = reader_sample_pages(Reader(str(beton)))
    for w in WORLDS:
        secs = _best(lambda: epoch_order(pages, np.arange(n), kind="quasi_random", num_replicas=w, rank=w - 1,
                                         seed=0, epoch=3, buffer_pages=2 * BATCH_SIZE))
        rows.append(Row(f"quasi_random order of one epoch, W={w}", f"{secs:.3f} s", "one rank (the last)"))
    rows.append(Row("resume, same world W=8", f"{resume_seconds(beton, 8, 8, args.workers):.3f} s",
                    "load_state_dict -> first order, mid-epoch state"))
    rows.append(Row("resume, elastic W=8->4", f"{resume_seconds(beton, 8, 4, args.workers):.3f} s",
                    "recomputes all 8 old orders, re-shards the rest"))
    for os_cache in (False, True):
        r = spawn({"kind": "load", "beton": str(beton), "workers": args.workers, "os_cache": os_cache,
                   "batches": args.scale_batches})
        rows.append(Row(f"loader peak RSS, os_cache={os_cache}", f"{r['peak_rss_mib']:,.0f} MiB",
                        f"{r['batches']} batches of {BATCH_SIZE} at W=1, {args.workers} workers, "
                        f"{r['img_per_s']:,.0f} img/s"))
    for w, total, per_rank, open_pages in pages_rows(pages, WORLDS):
        rows.append(Row(f"pages per rank, W={w}", f"{per_rank:,} of {total:,}",
                        f"quasi-random, max over ranks; at most {open_pages:,} open at once"))
    return rows


def markdown(rows: list[Row], n: int, source: str) -> str:
    """The table plus a line saying what was measured on what."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"| measurement (N = {n:,}) | value | note |", "|---|---|---|"]
    lines += [f"| {r.what} | {r.value} | {r.note} |" for r in rows]
    lines.append("")
    lines.append(f"Payloads of {source}; {os.cpu_count()} CPUs, load average {load:.2f} at the end "
                 f"(a shared machine: times are indicative); best of 3 for in-process timings.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
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
    """Build the ImageNet-size beton (cached under ``--out``), measure, print; update the README with --readme."""
    from jit_ffcv.bench.report import update_readme

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
    table = markdown(measure(beton, small, src, args), n, source)
    print(table)
    (out / "scale.md").write_text(table + "\n")
    if args.readme:
        update_readme(Path(args.readme), "scale", table)
    return 0


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    print("RESULT " + json.dumps(CHILDREN[config["kind"]](config)), flush=True)
