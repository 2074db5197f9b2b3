"""``jit-ffcv bench``: its options, their checks, and the runs they select."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jit_ffcv.bench.checks import check_args
from jit_ffcv.bench.cost import cost_line, estimate
from jit_ffcv.bench.data import build_betons, dataset_scan
from jit_ffcv.bench.deps import BENCH_EXTRA, MissingDependencyError, require
from jit_ffcv.bench.fixed import FIXED_SIZE, fixed_note, fixed_seconds
from jit_ffcv.bench.machine import describe, machine_info
from jit_ffcv.bench.measure import writer_rates
from jit_ffcv.bench.pages import pages_report
from jit_ffcv.bench.pipelines import KIND_MODULES, PIPELINES, Spec, child_config, help_lines, select, spawn_child
from jit_ffcv.bench.quality import quality_table
from jit_ffcv.bench.report import DOC, Result, markdown, save_results, update_doc
from jit_ffcv.bench.run import Job, measure_size
from jit_ffcv.bench.stats import Spread, threads
from writers.beton import replicate_beton
from writers.folder import FolderScan

DESCRIPTION = "Throughput benchmark: the JiT reference loader, bare FFCV and jit-ffcv, side by side."
#: the pipelines of the node layout (``--procs``): the DataModule at several layouts, and bare FFCV next to it
NODE_DATAMODULE, NODE_FFCV = "jit-ffcv DataModule, jpg q90", "FFCV Loader, no flip, jpg q90"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options of ``jit-ffcv bench``."""
    p = argparse.ArgumentParser(prog="jit-ffcv bench", description=DESCRIPTION)
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the benchmark's options on ``p``, and list the pipelines ``--pipelines`` selects in its help."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the pipeline list one per line
    p.epilog = f"pipelines (--pipelines takes a part of a name; the reference is the ratio's base):\n{help_lines()}"
    p.add_argument("--data-path", default=None,
                   help="dataset root with train/ (default: shared sample, else synthetic)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch-size", type=int, default=128)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    p.add_argument("--workers", type=int, default=cpus, help="decoding threads per process (default: the usable CPUs)")
    p.add_argument("--target-samples", type=int, default=3000,
                   help="replicate the source up to about this many samples")
    p.add_argument("--epochs", type=int, default=4, help="FFCV epochs per pipeline (the first is warm-up; >= 2)")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="run FFCV pipelines at least this long (steady part)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds of the limit and every pipeline; tables "
                   "show medians with the spread (min-max)")
    p.add_argument("--procs", type=int, default=None, help="node layout only: this many processes (the ranks of one "
                   "node, each its own shard) of --workers threads, against the honest procs x workers limit")
    p.add_argument("--out", default="bench_out", help="folder for the table, CSV, JSON, chart and cached betons")
    p.add_argument("--pipelines", nargs="*", default=None, metavar="NAME",
                   help="parts of pipeline names (listed below) selecting the pipelines to measure (default: all)")
    p.add_argument("--skip-writer", action="store_true", help="skip the writer and memory-bound measurements")
    p.add_argument("--doc", "--readme", dest="doc", default=None, help=f"markdown file whose generated block "
                   f"<!-- bench:TAG:start --> ... <!-- bench:TAG:end --> is replaced (make bench: {DOC})")
    p.add_argument("--tag", default=None, help="block tag used with --doc (default: cpu; node with --procs; quality, "
                   "pages, mixing, scale for those)")
    p.add_argument("--quality-table", action="store_true", help="only print the JPEG quality/PSNR/size table")
    p.add_argument("--device", default="cpu", help="also measure jit-ffcv with batches delivered on this device "
                   "(e.g. cuda): uint8 and JiT's float x/255*2-1")
    p.add_argument("--pages", action="store_true", help="only print pages read per rank for W=1,2,8")
    p.add_argument("--mixing", action="store_true", help="only print quasi-random class mixing vs a shuffle "
                   "on a simulated class-sorted ImageNet-1k (W=1,8,64)")
    p.add_argument("--chart", default=None, help="where to save the PNG chart (default: OUT/chart.png)")
    from jit_ffcv.bench.scale import add_arguments as add_scale_arguments

    return add_scale_arguments(p)


def needed_modules(args: argparse.Namespace, specs: Sequence[Spec]) -> list[str]:
    """The modules what ``args`` selects imports: the ``bench`` extra and each selected pipeline's."""
    if args.mixing:
        return ["numpy"]
    if args.scale:
        return ["ffcv", "lightning", "numba"]
    if args.pages or args.quality_table:
        return ["ffcv", "numba", "PIL"]
    pipelines = [m for s in specs for m in KIND_MODULES[s.kind]]
    return [*BENCH_EXTRA, "tqdm", "lightning", "numba", "PIL", "torch", *pipelines]  # run_pipelines, machine_info


def _check_dependencies(args: argparse.Namespace, specs: Sequence[Spec]) -> None:
    """Exit with one line naming what is missing and how to install it, before anything is measured."""
    try:
        require(needed_modules(args, specs))
    except MissingDependencyError as exc:
        if getattr(args, "debug", False):
            raise
        sys.exit(f"jit-ffcv: error: {exc}")


def specs_of(args: argparse.Namespace) -> list[Spec]:
    """The pipelines of a run: ``--pipelines``' selection (the node layout's two), plus delivery on ``--device``."""
    specs = select([NODE_DATAMODULE, NODE_FFCV] if args.procs else args.pipelines)
    if args.device != "cpu" and not args.procs:
        specs += [Spec(f"jit-ffcv DataModule → {args.device} {output}, jpg q90", "jit", "jpg90", output=output)
                  for output in ("uint8", "float")]
    return specs


def jobs_of(args: argparse.Namespace, specs: Sequence[Spec]) -> list[Job]:
    """The rows: every spec at ``--workers`` threads; with ``--procs P``, the node layouts at K and P x K threads."""
    if not args.procs:
        return [Job(s.name, s, args.workers) for s in specs]
    p, k = args.procs, args.workers
    dm, ffcv = (next(s for s in specs if s.name == name) for name in (NODE_DATAMODULE, NODE_FFCV))
    jobs = [Job(f"jit-ffcv DataModule, 1 process × {threads(k)}, jpg q90", dm, k)]
    if p > 1:
        jobs += [Job(f"jit-ffcv DataModule, 1 process × {threads(p * k)}, jpg q90", dm, p * k),
                 Job(f"jit-ffcv DataModule, {p} processes × {threads(k)}, jpg q90", dm, k, p)]
    return jobs + [Job(f"FFCV Loader, no flip, 1 process × {threads(p * k)}, jpg q90", ffcv, p * k)]


def main(args: argparse.Namespace) -> int:
    """Check the options and dependencies, then run what ``args`` selects (by default every pipeline at every size)."""
    check_args(args)
    full_run = not (args.scale or args.mixing or args.pages or args.quality_table)
    specs = specs_of(args) if full_run else []
    _check_dependencies(args, specs)
    if args.scale:
        from jit_ffcv.bench.scale import main as scale_main

        return scale_main(args)
    if args.mixing:
        from jit_ffcv.mixing import mixing_report

        return _publish(mixing_report(batch_size=args.batch_size), args, "mixing")
    out = Path(args.out)
    work = out / "betons"
    work.mkdir(parents=True, exist_ok=True)
    scan, source = dataset_scan(args.data_path, work)
    replicate = max(1, round(args.target_samples / len(scan.samples)))
    if args.pages:
        unique = build_betons(scan, args.sizes[0], ["jpg90"], replicate, work, args.workers, progress=False)["jpg90"]
        return _publish(pages_report(unique), args, "pages", out / "pages.md")
    if args.quality_table:
        print(f"JPEG quality vs PSNR against the exact crop, on {source}:")
        return _publish(quality_table(scan, args.sizes), args, "quality", out / "quality.md")
    return _run_pipelines(args, jobs_of(args, specs), scan, source, replicate, out)


def _publish(table: str, args: argparse.Namespace, tag: str, path: Path | None = None) -> int:
    """Print ``table`` with the machine's line, save it to ``path`` and, with ``--doc``, into its ``tag`` block."""
    table = f"{table}\n\n{describe(machine_info(args.workers))}"
    print(table)
    if path is not None:
        path.write_text(table + "\n")
    if args.doc:
        update_doc(Path(args.doc), args.tag or tag, table)
    return 0


def _run_pipelines(args: argparse.Namespace, jobs: list[Job], scan: FolderScan, source: str, replicate: int,
                   out: Path) -> int:
    """Measure ``jobs`` at every size in ``--repeat`` rounds, then the fixed cost, writer and memory notes."""
    from tqdm import tqdm

    fixed = not args.procs and any(j.spec.kind == "jit" for j in jobs)
    seconds, disk = estimate(args, [(j.spec.kind, j.spec.beton) for j in jobs], len(scan.samples), replicate,
                             len(jobs))
    children = args.repeat * (len(jobs) * len(args.sizes) + fixed) + (0 if args.skip_writer or args.procs else 2)
    print(cost_line(seconds, disk, children), flush=True)
    info = machine_info(args.workers)
    results: list[Result] = []
    notes = [f"Data: {source}, {len(scan.samples)} images replicated ×{replicate} = "
             f"{len(scan.samples) * replicate} samples per epoch; batch {args.batch_size}; "
             f"FFCV rows: at least {args.epochs - 1} steady epochs and {args.min_seconds:g} s after 1 warm-up epoch "
             f"(compile), os_cache=True; {args.repeat} interleaved round(s): median (min–max); ratios round by round; "
             f"1st batch: seconds from building the loader (train_dataloader(), Loader(...)) to its first batch in a "
             f"fresh process."]
    bar = tqdm(total=len(jobs) * len(args.sizes) * args.repeat, desc="bench", unit="run")
    limits: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for size in args.sizes:
        size_results, size_notes, limits[size] = measure_size(args, jobs, scan, replicate, size, out / "betons", bar)
        results += size_results
        notes += size_notes
    bar.close()
    if fixed:
        notes.append(_fixed_cost_note(args, scan, out / "betons", limits))
    if not args.skip_writer and not args.procs:
        notes += _writer_and_memory_notes(scan, args, out / "betons")
    table = markdown(results, args.sizes, info, notes)
    print(table)
    name = "node" if args.procs else "results"
    chart_path = save_results(results, args.sizes, info, notes, table, out, Path(args.chart) if args.chart else None,
                              name=name)
    if args.doc:
        update_doc(Path(args.doc), args.tag or ("node" if args.procs else "cpu"), table)
    print(f"\nsaved {out}/{name}.md, {name}.csv, {name}.json and {chart_path}")
    return 0


def _fixed_cost_note(args: argparse.Namespace, scan: FolderScan, work: Path,
                     limits: dict[int, dict[str, list[dict[str, Any]]]]) -> str:
    """Measure the DataModule on a 32 px raw beton ``--repeat`` times; the estimate against this run's rows."""
    replicate = max(1, round(args.target_samples / len(scan.samples)))
    beton = build_betons(scan, FIXED_SIZE, ["raw"], replicate, work, args.workers, progress=False)["raw"]
    spec = next(s for s in PIPELINES if s.name == "jit-ffcv DataModule, raw")
    cfg = child_config(spec, FIXED_SIZE, args.batch_size, args.workers, epochs=args.epochs,
                       min_seconds=args.min_seconds, beton=beton)
    fixed = Spread.of([fixed_seconds(spawn_child(cfg)["img_per_s"], args.batch_size) for _ in range(args.repeat)])
    key = f"jpg90@{args.workers}"
    one_core = {s: Spread.of([r["one_core"] for r in runs[key]]).median for s, runs in limits.items() if key in runs}
    return fixed_note(fixed, args.batch_size, one_core, args.workers)


def _writer_and_memory_notes(scan: FolderScan, args: argparse.Namespace, work: Path) -> list[str]:
    """Writer speed-up from 1 to N workers and loader RSS for two beton sizes (process cache)."""
    from jit_ffcv.imagenet import TRAIN_SAMPLES as imagenet

    notes = []
    for size in args.sizes:
        rates = writer_rates(scan, size, work, sorted({1, args.workers}))
        r1, rn = rates[1], rates[max(rates)]
        eff = rn / (r1 * max(rates))
        minutes = imagenet / (r1 * 16 * min(eff, 1.0)) / 60
        notes.append(f"Writer {size}px jpg q90: {r1:,.0f} img/s with 1 worker, {rn:,.0f} with {max(rates)} "
                     f"({100 * eff:.0f}% linear); ImageNet-1k train ({imagenet:,} images) on 16 such cores ≈ "
                     f"{minutes:.0f} min, extrapolated at that efficiency, files in the page cache.")
    size = args.sizes[0]
    unique = build_betons(scan, size, ["raw"], 1, work, args.workers, progress=False)["raw"]
    rss = []
    for times in (4, 20):  # payloads 5x apart
        big = work / f"rss_{size}_raw_x{times}.beton"
        if not big.exists():
            replicate_beton(unique, big, times)
        cfg = {"kind": "jit", "img_size": size, "batch_size": args.batch_size, "workers": args.workers,
               "flip": True, "output": "uint8", "os_cache": False, "buffer_pages": 8, "epochs": 2,
               "beton": str(big), "beton_name": "raw"}
        rss.append((times, big.stat().st_size / 2**20, spawn_child(cfg)["peak_rss_mib"]))
    notes.append("RSS: the loading process's peak (VmHWM) plus its worker processes sampled every 0.5 s "
                 "(the reference's DataLoader workers share pages with it, so its figure over-counts somewhat).")
    notes.append("Loader RSS with FFCV's process cache (os_cache=False, buffer_pages=8): " + "; ".join(
        f"beton {mib:,.0f} MiB → peak RSS {peak:,.0f} MiB" for _, mib, peak in rss) + ".")
    return notes

