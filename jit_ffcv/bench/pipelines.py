"""The measured pipelines (reference, bare FFCV, jit-ffcv) and the fresh child process that runs one.

Every pipeline runs in a fresh child process, so peak RSS, numba compilation and
FFCV's process-wide thread settings never leak from one to the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jit_ffcv.bench.data import _mode_quality
from jit_ffcv.bench.measure import PeakRSS, _time_epochs


@dataclass(frozen=True)
class Spec:
    """One pipeline to measure: what loads which beton, with or without flip."""

    name: str
    kind: str  # reference | ffcv | jit
    beton: str | None = None  # jpg90 | jpg95 | raw (None for the reference)
    flip: bool = True
    output: str = "uint8"
    jpeg_decode: str = "accurate"  # jit rows: the DataModule's jpeg_decode option


PIPELINES: tuple[Spec, ...] = (
    Spec("reference (PIL + DataLoader)", "reference"),
    Spec("FFCV Loader, no flip, jpg q90", "ffcv", "jpg90", flip=False),
    Spec("FFCV Loader + RandomHorizontalFlip, jpg q90", "ffcv", "jpg90"),
    Spec("jit-ffcv DataModule, jpg q90", "jit", "jpg90"),
    Spec("jit-ffcv DataModule, no flip, jpg q90", "jit", "jpg90", flip=False),
    Spec("jit-ffcv DataModule, fast decode (biased), jpg q90", "jit", "jpg90", jpeg_decode="fast"),
    Spec("jit-ffcv DataModule, jpg q95", "jit", "jpg95"),
    Spec("FFCV Loader, no flip, raw", "ffcv", "raw", flip=False),
    Spec("FFCV Loader + RandomHorizontalFlip, raw", "ffcv", "raw"),
    Spec("jit-ffcv DataModule, raw", "jit", "raw"),
)



def _reference_epochs(cfg: dict[str, Any]) -> Callable[[int], int]:
    """The seed's pipeline: ImageFolder -> PIL -> RGB -> center_crop_arr -> flip -> uint8 CHW."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, DistributedSampler

    from jit_ffcv.crop import center_crop_arr
    from writers.encode import load_rgb

    class Reference(Dataset):
        def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
            self.samples, self.size = samples, size

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            path, label = self.samples[i]
            img = center_crop_arr(load_rgb(path), self.size)
            if torch.rand(1) < 0.5:  # torchvision RandomHorizontalFlip
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            return torch.from_numpy(np.array(img)).permute(2, 0, 1), label  # PILToTensor

    samples = [tuple(s) for s in cfg["samples"]] * cfg["replicate"]
    dataset = Reference(samples, cfg["img_size"])
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], sampler=sampler, num_workers=cfg["workers"],
                        drop_last=True, persistent_workers=True, pin_memory=torch.cuda.is_available())

    def epoch(e: int) -> int:
        sampler.set_epoch(e)
        return sum(len(y) for _, y in loader)

    return epoch


def _ffcv_epochs(cfg: dict[str, Any]) -> Callable[[int], int]:
    """A bare FFCV Loader as its docs suggest: QUASI_RANDOM, FFCV's own flip."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    image = [SimpleRGBImageDecoder()] + ([RandomHorizontalFlip()] if cfg["flip"] else []) + [ToTensor(), ToTorchImage()]
    loader = Loader(cfg["beton"], batch_size=cfg["batch_size"], num_workers=cfg["workers"], os_cache=True,
                    order=OrderOption.QUASI_RANDOM, seed=0, drop_last=True,
                    pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()], "index": None})
    return lambda e: sum(len(y) for _, y in loader)


def _jit_epochs(cfg: dict[str, Any]) -> Callable[[int], int]:
    """jit-ffcv's DataModule train loader, defaults except the beton and sizes."""
    from jit_ffcv.datamodule import JiTDataModule

    mode, quality = _mode_quality(cfg["beton_name"])
    dm = JiTDataModule(data_path=str(Path(cfg["beton"]).parent), img_size=cfg["img_size"],
                       batch_size=cfg["batch_size"], num_workers=cfg["workers"], mode=mode, quality=quality,
                       train_beton=cfg["beton"], val_beton=str(Path(cfg["beton"]).with_suffix(".none")),
                       flip_prob=0.5 if cfg["flip"] else 0.0, output=cfg["output"], os_cache=cfg["os_cache"],
                       buffer_pages=cfg.get("buffer_pages"), device=cfg.get("device"),
                       jpeg_decode=cfg.get("jpeg_decode", "accurate"))
    dm.setup("fit")
    loader = dm.train_dataloader()

    def epoch(e: int) -> int:
        import torch

        loader.sampler.set_epoch(e)
        n = sum(len(y) for _, y in loader)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # count only batches that really arrived on the device
        return n

    return epoch


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Measure one pipeline in this (fresh) process; returns first-epoch s, img/s, peak RSS."""
    build = {"reference": _reference_epochs, "ffcv": _ffcv_epochs, "jit": _jit_epochs}[cfg["kind"]]
    with PeakRSS() as rss:
        iterate = build(cfg)
        first, rate = _time_epochs(iterate, cfg["epochs"], cfg.get("min_seconds", 0.0))
    return {"first_epoch_s": first, "img_per_s": rate, "peak_rss_mib": rss.peak}


def _spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`run_child` in a fresh interpreter and parse its JSON line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "jit_ffcv.bench", "--child", json.dumps(cfg)],
                          capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {cfg['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])
