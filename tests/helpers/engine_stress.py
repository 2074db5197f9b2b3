"""Stress the decoding engine: random thread counts, slots, caches, orders, consumer pauses and abandoned epochs.

``python -m tests.helpers.engine_stress --trials 300 --seed 1`` writes a paged raw beton, takes every
batch of two epochs with one thread as the reference, then runs ``--trials`` random trials, each of
which must deliver exactly the reference's batches (pixels and labels), stop cleanly when abandoned
part-way, and, when an op fails at a chosen batch, deliver exactly the batches before it and then a
``LoaderThreadError``. Prints one line per failure and a summary; exits 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jit_ffcv.epoch import LoaderThreadError
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import FlipDecoder
from jit_ffcv.traversal import QuasiRandomOrder, RandomOrder, SequentialOrder
from writers.ffcv_api import DatasetWriter, IntDecoder, IntField, Operation, RGBImageField, State, ToTensor

N, SIZE, B = 120, 256, 4  # 192 KiB raw images on 2 MiB pages: 10 per page, 12 pages, 30 batches per epoch
ORDERS = {"random": RandomOrder, "quasi_random": lambda: QuasiRandomOrder(buffer_pages=2),
          "sequential": SequentialOrder}


class FailOn(Operation):
    """A torch-side op that raises on the batch holding sample ``bad`` (labels are sample ids here)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad = bad

    def generate_code(self) -> Any:
        bad = self.bad

        def fail_on(labels, _dst):  # type: ignore[no-untyped-def]
            if (labels == bad).any():
                raise ValueError(f"sample {bad} fails on purpose")
            return labels

        return fail_on

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        return replace(previous_state, jit_mode=False), None


@dataclass(frozen=True)
class Trial:
    workers: int
    ahead: int
    os_cache: bool
    order: str
    pause_s: float  # consumer pause per batch
    abandon_at: int | None  # take this many batches of epoch 0, then start epoch 0 again
    fail_sample: int | None  # a sample whose batch raises in epoch 1 (of a second loader)


def write_beton(folder: Path) -> Path:
    path = folder / "stress.beton"
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), i) for i in range(N)]
    writer = DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                           page_size=1 << 21, num_workers=1)
    writer.from_indexed_dataset(samples)
    return path


def make_loader(beton: Path, trial: Trial, fail: bool = False) -> JiTLoader:
    label_ops: list[Any] = [IntDecoder(), ToTensor()]
    if fail and trial.fail_sample is not None:
        label_ops.append(FailOn(trial.fail_sample))
    return JiTLoader(str(beton), batch_size=B, num_workers=trial.workers, batches_ahead=trial.ahead,
                     os_cache=trial.os_cache, order=ORDERS[trial.order](), seed=7, drop_last=False, pin_memory=False,
                     pipelines={"image": [FlipDecoder(flip_prob=0.5, seed=3, chw=True), ToTensor()],
                                "label": label_ops})


def take(loader: JiTLoader, epoch: int, pause_s: float, limit: int | None = None) -> list[tuple[Any, Any]]:
    loader.set_epoch(epoch)
    out = []
    it = iter(loader)
    for x, y in it:
        out.append((x.numpy().copy(), y.numpy().reshape(-1).copy()))
        if pause_s:
            time.sleep(pause_s)
        if limit is not None and len(out) >= limit:
            break
    del it
    return out


def check(got: list, expected: list, what: str) -> str | None:
    if len(got) != len(expected):
        return f"{what}: {len(got)} batches, expected {len(expected)}"
    for b, ((x, y), (ex, ey)) in enumerate(zip(got, expected, strict=True)):
        if not np.array_equal(y, ey):
            return f"{what}: batch {b} labels differ"
        if not np.array_equal(x, ex):
            return f"{what}: batch {b} pixels differ"
    return None


def run_trial(beton: Path, trial: Trial, reference: dict[tuple[str, int], list]) -> str | None:
    loader = make_loader(beton, trial)
    if trial.abandon_at is not None:
        partial = take(loader, 0, trial.pause_s, trial.abandon_at)
        if (problem := check(partial, reference[(trial.order, 0)][: trial.abandon_at], "abandoned epoch 0")):
            return problem
    if (problem := check(take(loader, 0, trial.pause_s), reference[(trial.order, 0)], "epoch 0")):
        return problem
    expected = reference[(trial.order, 1)]
    if trial.fail_sample is None:
        return check(take(loader, 1, trial.pause_s), expected, "epoch 1")
    bad = next(b for b, (_, y) in enumerate(expected) if trial.fail_sample in y.tolist())
    got: list = []
    loader = make_loader(beton, trial, fail=True)
    loader.set_epoch(1)
    try:
        for x, y in loader:
            got.append((x.numpy().copy(), y.numpy().reshape(-1).copy()))
    except LoaderThreadError as error:
        if f"failed at batch {bad}" not in str(error):
            return f"epoch 1: wrong failure: {error}"
        return check(got, expected[:bad], f"epoch 1 before the failure at batch {bad}")
    return f"epoch 1: no LoaderThreadError for sample {trial.fail_sample} (batch {bad})"


def random_trial(rng: random.Random) -> Trial:
    return Trial(workers=rng.choice([1, 2, 3, 4, 6]), ahead=rng.choice([1, 2, 3, 5]), os_cache=rng.random() < 0.5,
                 order=rng.choice(sorted(ORDERS)), pause_s=rng.choice([0.0, 0.0, 0.001, 0.004]),
                 abandon_at=rng.choice([None, None, 1, 3, 9]), fail_sample=rng.choice([None, None, None,
                                                                                       rng.randrange(N)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        beton = write_beton(Path(folder))
        reference = {}
        for order in ORDERS:
            one = make_loader(beton, Trial(1, 3, True, order, 0.0, None, None))
            reference.update({(order, epoch): take(one, epoch, 0.0) for epoch in (0, 1)})
        failures = 0
        started = time.perf_counter()
        for number in range(args.trials):
            trial = random_trial(rng)
            problem = run_trial(beton, trial, reference)
            if problem:
                failures += 1
                print(f"trial {number} {trial}: {problem}", flush=True)
        print(f"engine stress: {failures} of {args.trials} trials failed ({time.perf_counter() - started:.0f} s, "
              f"seed {args.seed})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
