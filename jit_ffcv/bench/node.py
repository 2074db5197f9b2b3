"""Node layout: P processes (the P ranks of one node, as ``torchrun --nproc_per_node=P``) of K threads each.

Each rank is a fresh process with its own shard (``num_replicas=P, rank=i``). Every rank compiles
and runs a warm-up epoch and one timed epoch, then waits; the parent starts them together (one
``GO`` line each) and times the steady epochs from that moment to the last rank's end (both read
on the system-wide monotonic clock, so a rank's exit is not counted). The total is every rank's
images over that wall time.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from typing import Any, TextIO

from jit_ffcv.bench.memory import own_peak_mib
from jit_ffcv.bench.spawn import child_env, command, parse

READY, GO = "READY ", "GO "


def rank_loader(cfg: dict[str, Any], first: Any = None) -> Any:
    """Rank ``cfg['rank']`` of ``cfg['procs']``: the DataModule's train loader on its own shard.

    ``first`` (a :class:`~jit_ffcv.bench.pipelines.FirstBatch`) starts its clock just before
    ``train_dataloader()``, as in the single-process rows.
    """
    from jit_ffcv.bench.pipelines import jit_datamodule

    dm = jit_datamodule(cfg, num_replicas=cfg["procs"], rank=cfg["rank"])
    if first is not None:
        first.begin()
    return dm.train_dataloader()


def run_rank(cfg: dict[str, Any], stdin: TextIO, stdout: TextIO) -> dict[str, Any]:
    """One rank: warm up, time one epoch, say READY, wait for ``GO E``, run E steady epochs; returns its counts."""
    from jit_ffcv.bench.pipelines import FirstBatch, loader_epochs

    first = FirstBatch()
    epoch = loader_epochs(rank_loader(cfg, first), first)
    epoch(0)  # warm-up: compilation
    start = time.perf_counter()
    epoch(1)
    stdout.write(READY + json.dumps({"epoch_s": time.perf_counter() - start}) + "\n")
    stdout.flush()
    line = stdin.readline()
    if not line.startswith(GO):
        raise RuntimeError(f"rank {cfg['rank']} expected a {GO.strip()} line, got {line!r}")
    epochs, images, start = int(line[len(GO):]), 0, time.perf_counter()
    for e in range(2, 2 + epochs):
        images += epoch(e)
    return {"images": images, "seconds": time.perf_counter() - start, "epochs": epochs, "end": time.monotonic(),
            "first_batch_s": first.seconds, "peak_rss_mib": own_peak_mib()}


def _ready(proc: subprocess.Popen, cfg: dict[str, Any], err: Any) -> dict[str, Any]:
    """The READY line of a rank, or its failure with the end of its stderr."""
    for line in proc.stdout:
        if line.startswith(READY):
            return json.loads(line[len(READY):])
    err.seek(0)
    return parse(cfg, proc.wait(), "", err.read())  # raises: no result


def steady_epochs(epoch_seconds: list[float], epochs: int, min_seconds: float) -> int:
    """Steady epochs every rank runs: at least ``epochs - 1``, and enough for ``min_seconds`` at the slowest rank."""
    return max(epochs - 1, math.ceil(min_seconds / max(max(epoch_seconds), 1e-9)))


def run_layout(cfg: dict[str, Any], procs: int, timeout: float = 1800) -> dict[str, Any]:
    """Run ``procs`` ranks of ``cfg`` (a jit pipeline's child config) started together; returns their total."""
    ranks = [cfg | {"kind": "node", "procs": procs, "rank": i} for i in range(procs)]
    errs = [tempfile.TemporaryFile(mode="w+") for _ in ranks]
    children = [subprocess.Popen(command(c), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=e, text=True,
                                 env=child_env()) for c, e in zip(ranks, errs, strict=True)]
    try:
        ready = [_ready(p, c, e) for p, c, e in zip(children, ranks, errs, strict=True)]
        epochs = steady_epochs([r["epoch_s"] for r in ready], cfg["epochs"], cfg.get("min_seconds", 0.0))
        start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        for p in children:
            p.stdin.write(f"{GO}{epochs}\n")
            p.stdin.flush()
            p.stdin.close()
        outputs = [p.stdout.read() for p in children]
        results = []
        for p, c, e, out in zip(children, ranks, errs, outputs, strict=True):
            e.seek(0)
            results.append(parse(c, p.wait(timeout=timeout), out, e.read()))
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()
        for e in errs:
            e.close()
    wall = max(r["end"] for r in results) - start
    return {"img_per_s": sum(r["images"] for r in results) / wall, "seconds": wall, "epochs": epochs,
            "first_batch_s": max(r["first_batch_s"] for r in results),
            "peak_rss_mib": sum(r["peak_rss_mib"] for r in results), "first_epoch_s": float("nan"),
            "images": [r["images"] for r in results], "rank_seconds": [r["seconds"] for r in results]}
