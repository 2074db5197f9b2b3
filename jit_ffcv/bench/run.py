"""The measured rounds: per size, R rounds each measuring the honest limits, then every pipeline (fresh processes).

Interleaving puts the limit and each pipeline side by side in every round, so a machine that
speeds up or slows down during the run moves both; each row reports medians and the spread
(min-max) of the rounds, and its ratios are taken round by round.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jit_ffcv.bench.data import build_betons
from jit_ffcv.bench.limit import Payloads, limit_rates, one_core_rate
from jit_ffcv.bench.pipelines import Spec, child_config, spawn_child
from jit_ffcv.bench.report import Result
from jit_ffcv.bench.stats import Spread, ratios
from jit_ffcv.bench.stats import threads as threads_text
from writers.folder import FolderScan


@dataclass(frozen=True)
class Job:
    """One row: a pipeline run as ``procs`` processes of ``threads`` decoding threads each."""

    name: str
    spec: Spec
    threads: int
    procs: int = 1

    @property
    def limit_key(self) -> tuple[str, int] | None:
        """(beton, total threads) of the honest limit this row is measured against; None for the reference."""
        return (self.spec.beton, self.threads * self.procs) if self.spec.beton else None


def run_job(args: argparse.Namespace, job: Job, size: int, betons: dict[str, Path], scan: FolderScan,
            replicate: int) -> dict[str, Any]:
    """Measure ``job`` once at ``size``, in fresh processes; returns the child's (or the ranks' total) result."""
    reference = job.spec.kind == "reference"
    cfg = child_config(job.spec, size, args.batch_size, job.threads, epochs=2 if reference else args.epochs,
                       min_seconds=0.0 if reference else args.min_seconds, samples=scan.samples, replicate=replicate,
                       beton=betons.get(job.spec.beton) if job.spec.beton else None,
                       device=args.device if job.spec.name.startswith("jit-ffcv DataModule →") else None)
    if job.procs > 1:
        from jit_ffcv.bench.node import run_layout

        return run_layout(cfg, job.procs)
    return spawn_child(cfg)


def limit_note(size: int, key: tuple[str, int], runs: Sequence[dict[str, Any]]) -> str:
    """What the honest limit of ``key`` was, next to one core × N, over the rounds."""
    name, threads = key
    what = "copy" if name == "raw" else "accurate decode"
    honest = Spread.of([r["honest"] for r in runs])
    naive = Spread.of([r["one_core_x_n"] for r in runs])
    share = ratios([r["honest"] for r in runs], [r["one_core_x_n"] for r in runs]).text(0, 100, "%")
    apart = "" if all(r["overlapped"] for r in runs) else " (warning: the threads did not all run at once)"
    n = threads_text(threads)
    return (f"{size}px {name}, {n}: honest limit {honest.text()} img/s ({n}, each its own "
            f"slice of the stored payloads, {what} at the same time); one core × {threads} = {naive.text()} img/s; "
            f"honest / (one core × N) = {share}{apart}.")


def measure_size(args: argparse.Namespace, jobs: Sequence[Job], scan: FolderScan, replicate: int, size: int,
                 work: Path, bar: Any) -> tuple[list[Result], list[str], dict[str, list[dict[str, Any]]]]:
    """Every job at one size, ``--repeat`` interleaved rounds; returns rows, limit notes and the limit runs."""
    from writers.metadata import read_metadata

    names = sorted({j.spec.beton for j in jobs if j.spec.beton})
    betons = build_betons(scan, size, names, replicate, work, args.workers, progress=False)
    keys = sorted({j.limit_key for j in jobs if j.limit_key})
    limits: dict[tuple[str, int], list[dict[str, Any]]] = {k: [] for k in keys}
    runs: dict[str, list[dict[str, Any]]] = {j.name: [] for j in jobs}
    for _ in range(args.repeat):
        for key in keys:
            limits[key].append(limit_rates(betons[key[0]], key[1]))
        for job in jobs:
            bar.set_postfix_str(f"{size}px {job.name}")
            runs[job.name].append(run_job(args, job, size, betons, scan, replicate))
            bar.update(1)
    results = []
    for job in jobs:
        rs = runs[job.name]
        bpi = None
        if job.spec.beton:
            meta = read_metadata(betons[job.spec.beton])
            bpi = meta.payload_bytes / meta.num_samples
        honest = [r["honest"] for r in limits[job.limit_key]] if job.limit_key else []
        results.append(Result(
            job.name, size, Spread.of([r["img_per_s"] for r in rs]).median,
            Spread.of([r["first_epoch_s"] for r in rs]).median, max(r["peak_rss_mib"] for r in rs), bpi,
            Spread.of(honest).median if honest else None, rounds=[r["img_per_s"] for r in rs], limit_rounds=honest,
            first_batch_rounds=[r["first_batch_s"] for r in rs if r.get("first_batch_s") is not None]))
    notes = [limit_note(size, k, limits[k]) for k in keys]
    if any(j.spec.jpeg_decode == "fast" for j in jobs):
        payloads = Payloads.read(betons["jpg90"])
        from jit_ffcv.jpeg import decode_flags

        fast, accurate = one_core_rate(payloads, flags=decode_flags("fast")), one_core_rate(payloads)
        notes.append(f"{size}px jpg90: one core's fast-IDCT decode (opt-in, biased) {fast:,.0f} img/s against "
                     f"{accurate:,.0f} accurate; the accurate decode costs {100 * (fast / accurate - 1):.1f}% more "
                     f"time per image.")
    return results, notes, {f"{k[0]}@{k[1]}": v for k, v in limits.items()}
