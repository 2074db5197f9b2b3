"""``jit-ffcv demo``: write a beton, train a tiny JiT on it, compare the loader with the reference.

The mission's flow in about a minute on 2 cores, with no download (the shared ImageNet
sample when present, else a synthetic ImageFolder it generates): (a) write the beton,
(b) train :class:`jit_ffcv.toy.TinyJiT` for a few steps on ``JiTDataModule`` batches,
(c) measure the reference pipeline and the DataModule on the same data and the same
number of workers with the benchmark's own functions, and print img/s and the ratio.
Saves a picture of the first batch and a ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jit_ffcv.synthetic import SHARED_SAMPLE, make_image_folder
from writers.cpus import usable_cpus

if TYPE_CHECKING:
    from jit_ffcv.bench.report import Result
    from jit_ffcv.datamodule import JiTDataModule

#: the benchmark's name for the DataModule row (the demo writes the default beton: jpg q90)
JIT_PIPELINE = "jit-ffcv DataModule, jpg q90"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``jit-ffcv demo``."""
    p.add_argument("--data-path", default=None, help="dataset root with train/ (default: shared sample or synthetic)")
    p.add_argument("--out", default="demo_out", help="folder for the beton, the batch picture and summary.json")
    p.add_argument("--img-size", type=int, default=256, help="a multiple of 8 (the tiny model's patch grid)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="training steps of the tiny model")
    p.add_argument("--bench-seconds", type=float, default=3.0,
                   help="steady seconds each pipeline of the comparison runs at least (after a warm-up epoch)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers of every pipeline (default: the usable CPUs, at most 2)")
    return p


def _check(args: argparse.Namespace) -> None:
    """Refuse options the demo cannot run with, naming the option and what is allowed."""
    if args.img_size < 32 or args.img_size % 8:
        raise ValueError(f"--img-size must be a multiple of 8 and at least 32, got {args.img_size}")
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.bench_seconds < 0:
        raise ValueError(f"--bench-seconds must be >= 0, got {args.bench_seconds}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")


def dataset_root(data_path: str | None, out: Path) -> Path:
    """``--data-path``, else the shared ImageNet sample, else a synthetic folder generated under ``out``."""
    if data_path:
        return Path(data_path)
    if (SHARED_SAMPLE / "train").is_dir():
        return SHARED_SAMPLE
    data = out / "synthetic"
    if not (data / "train").is_dir():
        make_image_folder(data, num_classes=8, per_class=12)
    return data


def save_batch(batch: tuple[np.ndarray, np.ndarray], class_names: list[str], picture: Path) -> int:
    """Save a training batch (NCHW uint8, labels) as a captioned grid, like ``jit-ffcv show``; return its size."""
    from jit_ffcv.grid import Sample, render_grid

    images, labels = batch
    samples = [Sample(sample_id=k, index=None, label=int(label), class_name=class_names[int(label)],
                      image=np.ascontiguousarray(image.transpose(1, 2, 0))) for k, (image, label) in
               enumerate(zip(images, labels, strict=True))]
    captions = [(f"{s.class_name} (label {s.label})", f"batch item {s.sample_id}") for s in samples]
    grid, _ = render_grid(samples, captions)
    grid.save(picture, format="PNG")
    return len(samples)


def write(data: Path, out: Path, args: argparse.Namespace, workers: int) -> JiTDataModule:
    """(a) Write the betons (if missing) with the DataModule's ``prepare_data`` and set it up."""
    from jit_ffcv.datamodule import JiTDataModule

    dm = JiTDataModule(str(data), img_size=args.img_size, batch_size=args.batch_size, num_workers=workers,
                       beton_dir=str(out / "ffcv"), write_workers=workers, mode="jpg", quality=90)
    start = time.perf_counter()
    dm.prepare_data()
    dm.setup("fit")
    info = dm.get_dataset_info()
    print(f"(a) beton: {info['num_samples']} images, {info['num_classes']} classes -> {info['train_beton']} "
          f"({time.perf_counter() - start:.1f} s, written once, reused on the next run)")
    if info["batches_per_rank"] < 1:
        raise ValueError(f"--batch-size {args.batch_size} is more than the {info['num_samples']} training images; "
                         f"use a smaller --batch-size")
    return dm


def train(loader: Any, img_size: int, num_classes: int, steps: int,
          seed: int = 0) -> tuple[list[float], tuple[np.ndarray, np.ndarray]]:
    """(b) ``steps`` AdamW steps of TinyJiT on ``loader``'s batches; the losses and the first batch (images, labels)."""
    import torch

    from jit_ffcv.toy import TinyJiT, flow_matching_loss

    torch.manual_seed(seed)
    model = TinyJiT(img_size=img_size, patch_size=img_size // 8, num_classes=num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    noise = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    first: tuple[np.ndarray, np.ndarray] | None = None
    epoch = 0
    while len(losses) < steps:
        loader.sampler.set_epoch(epoch)
        for images, labels in loader:
            if first is None:
                first = images.numpy().copy(), labels.numpy().reshape(-1).copy()
            loss = flow_matching_loss(model, images, labels, generator=noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
        epoch += 1
    assert first is not None
    return losses, first


def _reference_samples(data: Path, beton: Path) -> list[tuple[str, int]]:
    """The train files the beton holds (ImageFolder order, unreadable ones skipped): the reference's dataset."""
    from writers.folder import scan_split
    from writers.metadata import read_metadata

    skipped = {str(Path(s["path"]).resolve()) for s in read_metadata(beton).skipped}
    return [(p, y) for p, y in scan_split(data / "train").samples if str(Path(p).resolve()) not in skipped]


def compare(loader: Any, beton: Path, data: Path, args: argparse.Namespace, workers: int) -> list[Result]:
    """(c) img/s of the reference pipeline and of the DataModule's ``loader``: same data, batch and workers.

    Both are timed by the benchmark's own code: a warm-up epoch, then at least one epoch and
    ``--bench-seconds``. The reference runs in a fresh process, as in ``jit-ffcv bench`` (its
    DataLoader forks workers, which a process with loader threads must not do); the DataModule
    row times the loader that trained, whose numba code is compiled already (the benchmark's
    child would compile it again in its untimed warm-up epoch: the same img/s, seconds later).
    """
    from jit_ffcv.bench.pipelines import PIPELINES, child_config, loader_epochs, spawn_child, time_pipeline
    from jit_ffcv.bench.report import Result

    reference = child_config(PIPELINES[0], args.img_size, args.batch_size, workers, epochs=2,
                             min_seconds=args.bench_seconds, samples=_reference_samples(data, beton))
    ref = spawn_child(reference)
    jit = time_pipeline(loader_epochs(loader), epochs=2, min_seconds=args.bench_seconds)
    return [Result(PIPELINES[0].name, args.img_size, ref["img_per_s"], ref["first_epoch_s"], ref["peak_rss_mib"]),
            Result(JIT_PIPELINE, args.img_size, jit["img_per_s"], jit["first_epoch_s"], float("nan"))]


def main(args: argparse.Namespace) -> int:
    """Write, train, compare; print each step, save the batch picture and ``summary.json``."""
    from jit_ffcv.bench.report import ratio_table

    _check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = args.workers or min(2, usable_cpus())
    data = dataset_root(args.data_path, out)
    print(f"dataset: {data}")
    dm = write(data, out, args, workers)

    info = dm.get_dataset_info()
    loader = dm.train_dataloader()
    start = time.perf_counter()
    losses, first = train(loader, args.img_size, info["num_classes"], args.steps)
    print(f"(b) {len(losses)} training steps of TinyJiT (flow matching, x/255*2-1, batch {args.batch_size}) in "
          f"{time.perf_counter() - start:.1f} s (includes numba compile); loss per step:")
    print("    " + " ".join(f"{x:.3f}" for x in losses))
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"the tiny model's loss is not finite: {losses}")
    picture = out / "batch.png"
    shown = save_batch(first, info["class_names"], picture)

    print(f"(c) throughput, same {args.img_size} px data and {workers} workers each, batch {args.batch_size}, "
          f"after a warm-up epoch, at least {args.bench_seconds:g} s each ...")
    results = compare(loader, Path(info["train_beton"]), data, args, workers)
    print(ratio_table(results))
    summary = {"dataset": str(data), "train_beton": info["train_beton"], "workers": workers,
               "losses": losses, "throughput": [{"pipeline": r.name, "img_per_s": r.img_per_s} for r in results]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {picture} (the first training batch as trained on: {shown} images, captioned with class and label "
          f"like `jit-ffcv show`) and {out / 'summary.json'}")
    return 0
