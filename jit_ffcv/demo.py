"""``jit-ffcv demo``: write a beton, load it with JiTDataModule, show a batch and the speed.

With no ``--data-path`` it uses the shared ImageNet sample when present, else a
synthetic ImageFolder it generates, so it runs anywhere in under a minute.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from jit_ffcv.synthetic import SHARED_SAMPLE, make_image_folder
from writers.cpus import usable_cpus


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``jit-ffcv demo``."""
    p.add_argument("--data-path", default=None, help="dataset root with train/ (default: shared sample or synthetic)")
    p.add_argument("--out", default="demo_out", help="folder for the beton and the batch picture")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    return p


def _grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    """Tile NCHW uint8 images into one HWC picture."""
    n, c, h, w = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * h, cols * w, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i].transpose(1, 2, 0)
    return canvas


def main(args: argparse.Namespace) -> int:
    """Write (if needed), load two epochs, print what happened, save a picture of a batch."""
    from PIL import Image

    from jit_ffcv.datamodule import JiTDataModule

    out = Path(args.out)
    if args.data_path:
        data = Path(args.data_path)
    elif (SHARED_SAMPLE / "train").is_dir():
        data = SHARED_SAMPLE
    else:
        data = out / "synthetic"
        if not (data / "train").is_dir():
            make_image_folder(data, num_classes=8, per_class=12)
    print(f"dataset: {data}")
    workers = min(2, usable_cpus())
    dm = JiTDataModule(str(data), img_size=args.img_size, batch_size=args.batch_size, num_workers=workers,
                       beton_dir=str(out / "ffcv"), write_workers=workers)
    dm.prepare_data()
    dm.setup("fit")
    info = dm.get_dataset_info()
    print(f"train: {info['num_samples']} images, {info['num_classes']} classes, "
          f"{info['batches_per_rank']} batches of {args.batch_size} per epoch -> {info['train_beton']}")
    loader = dm.train_dataloader()
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        start, seen, first = time.perf_counter(), 0, None
        for images, labels in loader:
            if first is None:
                first = (images.numpy().copy(), labels.numpy().copy())
            seen += len(labels)
        dt = time.perf_counter() - start
        print(f"epoch {epoch}: {seen} images in {dt:.2f} s ({seen / dt:,.0f} img/s{', includes numba compile' if epoch == 0 else ''})")
    assert first is not None
    images, labels = first
    picture = out / "batch.png"
    Image.fromarray(_grid(images[:16])).save(picture)
    print(f"first batch of the last epoch: dtype {images.dtype}, shape {images.shape}, labels {labels[:8].tolist()} ...")
    print(f"saved {picture}")
    return 0
