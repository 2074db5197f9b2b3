"""Fresh-process start of jit-ffcv's train loader and of a bare FFCV ``Loader`` on the same beton.

    python -m tests.helpers.first_batch BETON [--batch-size 128] [--workers 2] [--repeat 1]

Each measurement runs in a fresh interpreter (``--child``), so the time includes everything a
training script pays at its start, numba's disk cache as it is (run twice: the first run of a
checkout fills it). Printed per loader: ``import`` (FFCV/jit-ffcv, torch), ``first batch`` (from
``train_dataloader()`` or ``Loader(...)`` to the first batch in hand), ``epoch`` (the same start to
the end of the first epoch) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

KINDS = ("jit-ffcv", "ffcv")


def _jit_ffcv(beton: str, batch_size: int, workers: int) -> Callable[[], Iterable[Any]]:
    from jit_ffcv.datamodule import JiTDataModule

    dm = JiTDataModule(data_path=str(Path(beton).parent), train_beton=beton, batch_size=batch_size,
                       num_workers=workers, pin_memory=False, num_replicas=1, rank=0)
    dm.setup("fit")
    return dm.train_dataloader


def _ffcv(beton: str, batch_size: int, workers: int) -> Callable[[], Iterable[Any]]:
    """FFCV's loader as its docs suggest, with its flip (the bench's reference pipeline)."""
    from writers.ffcv_api import (
        IntDecoder,
        Loader,
        OrderOption,
        RandomHorizontalFlip,
        SimpleRGBImageDecoder,
        Squeeze,
        ToTensor,
        ToTorchImage,
    )

    image = [SimpleRGBImageDecoder(), RandomHorizontalFlip(), ToTensor(), ToTorchImage()]
    return lambda: Loader(beton, batch_size=batch_size, num_workers=workers, order=OrderOption.QUASI_RANDOM, seed=0,
                          drop_last=True, pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()],
                                                     "index": None})


def child(kind: str, beton: str, batch_size: int, workers: int) -> dict[str, float]:
    """Time one fresh start of ``kind`` (this process must not have imported FFCV or jit-ffcv yet)."""
    started = time.perf_counter()
    make = (_jit_ffcv if kind == "jit-ffcv" else _ffcv)(beton, batch_size, workers)
    imported = time.perf_counter()
    batches = iter(make())
    next(batches)
    first = time.perf_counter()
    for _ in batches:
        pass
    done = time.perf_counter()
    return {"import_s": imported - started, "first_batch_s": first - imported, "epoch_s": done - imported,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(kind: str, beton: str, batch_size: int, workers: int) -> dict[str, float]:
    """:func:`child` in a fresh interpreter."""
    done = subprocess.run([sys.executable, __file__, beton, "--child", kind,
                           "--batch-size", str(batch_size), "--workers", str(workers)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("beton")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="fresh processes per loader, alternating")
    p.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.beton, args.batch_size, args.workers)))
        return
    print(f"{'loader':10} {'import s':>9} {'first batch s':>14} {'epoch s':>8} {'peak RSS MiB':>13}")
    for _ in range(args.repeat):
        for kind in KINDS:
            r = run(kind, args.beton, args.batch_size, args.workers)
            print(f"{kind:10} {r['import_s']:9.2f} {r['first_batch_s']:14.2f} {r['epoch_s']:8.2f} "
                  f"{r['peak_rss_mib']:13.0f}", flush=True)


if __name__ == "__main__":
    main()
