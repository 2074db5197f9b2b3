"""``jit-ffcv bench``: its options, and the run that measures every selected pipeline at every size."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from jit_ffcv.bench.data import build_betons, dataset_scan
from jit_ffcv.bench.deps import BENCH_EXTRA, MissingDependencyError, require
from jit_ffcv.bench.measure import decode_rate_one_core, machine_info, writer_rates
from jit_ffcv.bench.pages import pages_report
from jit_ffcv.bench.pipelines import KIND_MODULES, Spec, child_config, help_lines, run_child, select, spawn_child
from jit_ffcv.bench.quality import quality_table
from jit_ffcv.bench.report import Result, markdown, save_results, update_readme
from writers.beton import replicate_beton
from writers.folder import FolderScan

DESCRIPTION = "Throughput benchmark: the JiT reference loader, bare FFCV and jit-ffcv, side by side."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options of ``jit-ffcv bench``."""
    p = argparse.ArgumentParser(prog="jit-ffcv bench", description=DESCRIPTION)
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the benchmark's options on ``p``, and list the pipelines ``--pipelines`` selects in its help."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the pipeline list one per line
    p.epilog = f"pipelines (--pipelines takes a part of a name; the reference is the ratio's base):\n{help_lines()}"
    p.add_argument("--data-path", default=None, help="dataset root with train/ (default: shared sample, else synthetic)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    p.add_argument("--target-samples", type=int, default=3000, help="replicate the source up to about this many samples")
    p.add_argument("--epochs", type=int, default=4, help="FFCV epochs per pipeline (the first is warm-up)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="run FFCV pipelines at least this long (steady part)")
    p.add_argument("--out", default="bench_out", help="folder for the table, CSV, JSON, chart and cached betons")
    p.add_argument("--pipelines", nargs="*", default=None, metavar="NAME",
                   help="parts of pipeline names (listed below) selecting the pipelines to measure (default: all)")
    p.add_argument("--skip-writer", action="store_true", help="skip the writer and memory-bound measurements")
    p.add_argument("--readme", default=None, help="README to update between <!-- bench:TAG --> markers")
    p.add_argument("--tag", default="cpu", help="marker tag used with --readme")
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


def _specs(args: argparse.Namespace) -> list[Spec]:
    """The pipelines of a full run: ``--pipelines``' selection, plus delivery on ``--device`` if not the CPU."""
    specs = select(args.pipelines)
    if args.device != "cpu":
        specs += [Spec(f"jit-ffcv DataModule → {args.device} {output}, jpg q90", "jit", "jpg90", output=output)
                  for output in ("uint8", "float")]
    return specs


def main(args: argparse.Namespace) -> int:
    """Check the dependencies, then run what ``args`` selects (by default every pipeline at every size)."""
    full_run = not (args.scale or args.mixing or args.pages or args.quality_table)
    specs = _specs(args) if full_run else []
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
    return _run_pipelines(args, specs, scan, source, replicate, out)


def _publish(table: str, args: argparse.Namespace, tag: str, path: Path | None = None) -> int:
    """Print ``table``, save it to ``path`` and, with ``--readme``, into the README's ``tag`` block."""
    print(table)
    if path is not None:
        path.write_text(table + "\n")
    if args.readme:
        update_readme(Path(args.readme), tag, table)
    return 0


def _run_pipelines(args: argparse.Namespace, specs: list[Spec], scan: FolderScan, source: str, replicate: int,
                   out: Path) -> int:
    """Measure ``specs`` at every size, then the writer and memory notes; print and save everything."""
    from tqdm import tqdm

    info = machine_info(args.workers)
    results: list[Result] = []
    notes = [f"Data: {source}, {len(scan.samples)} images replicated ×{replicate} = "
             f"{len(scan.samples) * replicate} samples per epoch; batch {args.batch_size}; "
             f"FFCV rows: {args.epochs - 1} steady epochs after 1 warm-up epoch (compile), os_cache=True."]
    bar = tqdm(total=len(specs) * len(args.sizes), desc="bench", unit="run")
    for size in args.sizes:
        size_results, size_notes = _measure_size(args, specs, scan, replicate, size, out / "betons", bar)
        results += size_results
        notes += size_notes
    bar.close()
    if not args.skip_writer:
        notes += _writer_and_memory_notes(scan, args, out / "betons")
    table = markdown(results, args.sizes, info, notes)
    print(table)
    chart_path = save_results(results, args.sizes, info, notes, table, out, Path(args.chart) if args.chart else None)
    if args.readme:
        update_readme(Path(args.readme), args.tag, table)
    print(f"\nsaved {out}/results.md, results.csv, results.json and {chart_path}")
    return 0


def _measure_size(args: argparse.Namespace, specs: list[Spec], scan: FolderScan, replicate: int, size: int,
                  work: Path, bar: Any) -> tuple[list[Result], list[str]]:
    """Every spec at one image size, each in a fresh process, and the decode-bound notes of that size."""
    from writers.metadata import read_metadata

    names = sorted({s.beton for s in specs if s.beton})
    betons = build_betons(scan, size, names, replicate, work, args.workers, progress=False)
    limits = {n: decode_rate_one_core(p) * args.workers for n, p in betons.items()}
    results = []
    for spec in specs:
        bar.set_postfix_str(f"{size}px {spec.name}")
        reference = spec.kind == "reference"
        cfg = child_config(spec, size, args.batch_size, args.workers, epochs=2 if reference else args.epochs,
                           min_seconds=0.0 if reference else args.min_seconds, samples=scan.samples,
                           replicate=replicate, beton=betons.get(spec.beton) if spec.beton else None,
                           device=args.device if spec.name.startswith("jit-ffcv DataModule →") else None)
        r = spawn_child(cfg)
        bpi = None
        if spec.beton:
            meta = read_metadata(betons[spec.beton])
            bpi = meta.payload_bytes / meta.num_samples
        results.append(Result(spec.name, size, r["img_per_s"], r["first_epoch_s"], r["peak_rss_mib"], bpi,
                              limits.get(spec.beton) if spec.beton else None))
        bar.update(1)
    notes = [f"{size}px {n}: limit = one core's {'accurate decode' if n != 'raw' else 'copy'} rate "
             f"{limits[n] / args.workers:,.0f} img/s × {args.workers} workers = {limits[n]:,.0f} img/s."
             for n in names]
    if any(s.jpeg_decode == "fast" for s in specs):
        fast = decode_rate_one_core(betons["jpg90"], jpeg_decode="fast")
        notes.append(f"{size}px jpg90: one core's fast-IDCT decode (opt-in, biased) {fast:,.0f} img/s; the "
                     f"accurate decode costs {100 * (fast * args.workers / limits['jpg90'] - 1):.1f}% more time "
                     f"per image.")
    return results, notes


def _writer_and_memory_notes(scan: FolderScan, args: argparse.Namespace, work: Path) -> list[str]:
    """Writer speed-up from 1 to N workers and loader RSS for two beton sizes (process cache)."""
    notes = []
    from jit_ffcv.imagenet import TRAIN_SAMPLES as imagenet
    for size in args.sizes:
        rates = writer_rates(scan, size, work, sorted({1, args.workers}))
        r1, rn = rates[1], rates[max(rates)]
        eff = rn / (r1 * max(rates))
        minutes = imagenet / (r1 * 16 * min(eff, 1.0)) / 60
        notes.append(f"Writer {size}px jpg q90: {r1:,.0f} img/s with 1 worker, {rn:,.0f} with {max(rates)} "
                     f"({100 * eff:.0f}% linear); ImageNet-1k train (1,281,167 images) on 16 such cores ≈ "
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


def _entry(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print("RESULT " + json.dumps(run_child(json.loads(argv[1]))), flush=True)
        return 0
    return main(parse_args(argv))
