"""``jit-ffcv bench``: its options, and the run that measures every selected pipeline at every size."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from jit_ffcv.bench.data import build_betons, dataset_scan
from jit_ffcv.bench.measure import decode_rate_one_core, machine_info, writer_rates
from jit_ffcv.bench.pages import pages_report
from jit_ffcv.bench.pipelines import PIPELINES, Spec, _spawn, run_child
from jit_ffcv.bench.quality import quality_table
from jit_ffcv.bench.report import Result, chart, markdown, update_readme
from writers.beton import replicate_beton
from writers.folder import FolderScan


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options of ``jit-ffcv bench``."""
    p = argparse.ArgumentParser(prog="jit-ffcv bench", description="Throughput benchmark: the JiT reference loader, bare FFCV and jit-ffcv, side by side.")
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the benchmark's options on ``p``."""
    p.add_argument("--data-path", default=None, help="dataset root with train/ (default: shared sample, else synthetic)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    p.add_argument("--target-samples", type=int, default=3000, help="replicate the source up to about this many samples")
    p.add_argument("--epochs", type=int, default=4, help="FFCV epochs per pipeline (the first is warm-up)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="run FFCV pipelines at least this long (steady part)")
    p.add_argument("--out", default="bench_out", help="folder for the table, CSV, JSON, chart and cached betons")
    p.add_argument("--pipelines", nargs="*", default=None, help="substrings selecting pipelines (default: all)")
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


def main(args: argparse.Namespace) -> int:
    """Run every selected pipeline at every size; print and save the results."""
    from tqdm import tqdm

    if args.scale:
        from jit_ffcv.bench.scale import main as scale_main

        return scale_main(args)
    if args.mixing:
        from jit_ffcv.mixing import mixing_report

        table = mixing_report(batch_size=args.batch_size)
        print(table)
        if args.readme:
            update_readme(Path(args.readme), "mixing", table)
        return 0
    out = Path(args.out)
    work = out / "betons"
    work.mkdir(parents=True, exist_ok=True)
    scan, source = dataset_scan(args.data_path, work)
    replicate = max(1, round(args.target_samples / len(scan.samples)))
    if args.pages:
        unique = build_betons(scan, args.sizes[0], ["jpg90"], replicate, work, args.workers, progress=False)["jpg90"]
        table = pages_report(unique)
        print(table)
        (out / "pages.md").write_text(table + "\n")
        if args.readme:
            update_readme(Path(args.readme), "pages", table)
        return 0
    if args.quality_table:
        table = quality_table(scan, args.sizes)
        print(f"JPEG quality vs PSNR against the exact crop, on {source}:\n{table}")
        (out / "quality.md").write_text(table + "\n")
        if args.readme:
            update_readme(Path(args.readme), "quality", table)
        return 0
    specs = [s for s in PIPELINES if not args.pipelines or any(k in s.name for k in args.pipelines)]
    if args.device != "cpu":
        specs += [Spec(f"jit-ffcv DataModule → {args.device} {out}, jpg q90", "jit", "jpg90", output=out)
                  for out in ("uint8", "float")]
    info = machine_info(args.workers)
    results: list[Result] = []
    notes = [f"Data: {source}, {len(scan.samples)} images replicated ×{replicate} = "
             f"{len(scan.samples) * replicate} samples per epoch; batch {args.batch_size}; "
             f"FFCV rows: {args.epochs - 1} steady epochs after 1 warm-up epoch (compile), os_cache=True."]
    bar = tqdm(total=len(specs) * len(args.sizes), desc="bench", unit="run")
    for size in args.sizes:
        names = sorted({s.beton for s in specs if s.beton})
        betons = build_betons(scan, size, names, replicate, work, args.workers, progress=False)
        limits = {n: decode_rate_one_core(p) * args.workers for n, p in betons.items()}
        for spec in specs:
            bar.set_postfix_str(f"{size}px {spec.name}")
            cfg = {"kind": spec.kind, "img_size": size, "batch_size": args.batch_size, "workers": args.workers,
                   "flip": spec.flip, "output": spec.output, "os_cache": True, "jpeg_decode": spec.jpeg_decode,
                   "device": args.device if spec.name.startswith("jit-ffcv DataModule →") else None,
                   "epochs": 2 if spec.kind == "reference" else args.epochs,
                   "min_seconds": 0.0 if spec.kind == "reference" else args.min_seconds}
            if spec.kind == "reference":
                cfg |= {"samples": scan.samples, "replicate": replicate}
            else:
                cfg |= {"beton": str(betons[spec.beton]), "beton_name": spec.beton}
            r = _spawn(cfg)
            bpi = None
            if spec.beton:
                from writers.metadata import read_metadata

                meta = read_metadata(betons[spec.beton])
                bpi = meta.payload_bytes / meta.num_samples
            results.append(Result(spec.name, size, r["img_per_s"], r["first_epoch_s"], r["peak_rss_mib"], bpi,
                                  limits.get(spec.beton) if spec.beton else None))
            bar.update(1)
        for n in names:
            notes.append(f"{size}px {n}: limit = one core's {'accurate decode' if n != 'raw' else 'copy'} rate "
                         f"{limits[n] / args.workers:,.0f} img/s × {args.workers} workers = {limits[n]:,.0f} img/s.")
        if any(s.jpeg_decode == "fast" for s in specs):
            fast = decode_rate_one_core(betons["jpg90"], jpeg_decode="fast")
            notes.append(f"{size}px jpg90: one core's fast-IDCT decode (opt-in, biased) {fast:,.0f} img/s; the "
                         f"accurate decode costs {100 * (fast * args.workers / limits['jpg90'] - 1):.1f}% more time "
                         f"per image.")
    bar.close()
    if not args.skip_writer:
        notes += _writer_and_memory_notes(scan, args, work)
    table = markdown(results, args.sizes, info, notes)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"machine": info, "results": [asdict(r) for r in results],
                                                  "notes": notes}, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in asdict(results[0]) if k != "extra"])
        writer.writeheader()
        for r in results:
            writer.writerow({k: v for k, v in asdict(r).items() if k != "extra"})
    chart_path = Path(args.chart) if args.chart else out / "chart.png"
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    chart(results, args.sizes, chart_path)
    if args.readme:
        update_readme(Path(args.readme), args.tag, table)
    print(f"\nsaved {out}/results.md, results.csv, results.json and {chart_path}")
    return 0


def _writer_and_memory_notes(scan: FolderScan, args: argparse.Namespace, work: Path) -> list[str]:
    """Writer speed-up from 1 to N workers and loader RSS for two beton sizes (process cache)."""
    notes = []
    imagenet = 1_281_167
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
        rss.append((times, big.stat().st_size / 2**20, _spawn(cfg)["peak_rss_mib"]))
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
