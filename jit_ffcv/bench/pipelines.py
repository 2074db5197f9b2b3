"""The measured pipelines (reference, bare FFCV, jit-ffcv) and the fresh child process that runs one.

Every pipeline runs in a fresh child process, so peak RSS, numba compilation and
FFCV's process-wide thread settings never leak from one to the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jit_ffcv.bench.data import mode_quality
from jit_ffcv.bench.measure import time_epochs
from jit_ffcv.bench.memory import PeakRSS
from jit_ffcv.bench.spawn import spawn


@dataclass(frozen=True)
class Spec:
    """One pipeline to measure: what loads which beton, with or without flip, and what it shows."""

    name: str
    kind: str  # reference | ffcv | jit
    beton: str | None = None  # jpg90 | jpg95 | raw (None for the reference)
    flip: bool = True
    output: str = "uint8"
    jpeg_decode: str = "accurate"  # jit rows: the DataModule's jpeg_decode option
    about: str = ""  # one line for ``jit-ffcv bench --help``


PIPELINES: tuple[Spec, ...] = (
    Spec("reference (PIL + DataLoader)", "reference",
         about="JiT's loader: PIL, center_crop_arr, flip, PILToTensor in a DataLoader"),
    Spec("FFCV Loader, no flip, jpg q90", "ffcv", "jpg90", flip=False,
         about="bare FFCV Loader, QUASI_RANDOM, fast IDCT, no augmentation (FFCV's best case)"),
    Spec("FFCV Loader + RandomHorizontalFlip, jpg q90", "ffcv", "jpg90",
         about="bare FFCV Loader with FFCV's own flip"),
    Spec("jit-ffcv DataModule, jpg q90", "jit", "jpg90",
         about="the default: exact decode, seeded flip, contiguous NCHW uint8"),
    Spec("jit-ffcv DataModule, no flip, jpg q90", "jit", "jpg90", flip=False,
         about="the default without flip (what the flip costs)"),
    Spec("jit-ffcv DataModule, fast decode (biased), jpg q90", "jit", "jpg90", jpeg_decode="fast",
         about="opt-in jpeg_decode='fast' (what exact pixels cost)"),
    Spec("jit-ffcv DataModule, jpg q95", "jit", "jpg95", about="the default on a q95 beton"),
    Spec("FFCV Loader, no flip, raw", "ffcv", "raw", flip=False, about="bare FFCV Loader on a raw (lossless) beton"),
    Spec("FFCV Loader + RandomHorizontalFlip, raw", "ffcv", "raw",
         about="bare FFCV Loader with FFCV's flip on a raw beton"),
    Spec("jit-ffcv DataModule, raw", "jit", "raw", about="the DataModule on a raw (lossless) beton"),
)

#: what each kind of pipeline imports (module names) beyond the benchmark's own needs
KIND_MODULES: dict[str, tuple[str, ...]] = {
    "reference": ("torch", "PIL"),
    "ffcv": ("ffcv", "torch"),
    "jit": ("ffcv", "lightning", "numba", "torch"),
}


def select(patterns: Sequence[str] | None) -> list[Spec]:
    """The pipelines whose name contains one of ``patterns`` (all if none); a pattern matching none is an error."""
    if not patterns:
        return list(PIPELINES)
    unmatched = [k for k in patterns if not any(k in s.name for s in PIPELINES)]
    if unmatched:
        names = "; ".join(repr(s.name) for s in PIPELINES)
        raise ValueError(f"--pipelines {unmatched[0]!r} matches no pipeline; give a part of one of: {names}")
    return [s for s in PIPELINES if any(k in s.name for k in patterns)]


def help_lines() -> str:
    """One line per pipeline (name, then what it shows), for ``--help``."""
    width = max(len(s.name) for s in PIPELINES)
    return "\n".join(f"  {s.name:<{width}}  {s.about}" for s in PIPELINES)


def child_config(spec: Spec, img_size: int, batch_size: int, workers: int, *, epochs: int, min_seconds: float,
                 samples: Sequence[tuple[str, int]] = (), replicate: int = 1, beton: Path | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """What :func:`run_child` needs to measure ``spec``: the reference reads ``samples``, the others ``beton``."""
    cfg: dict[str, Any] = {
        "kind": spec.kind, "img_size": img_size, "batch_size": batch_size, "workers": workers, "flip": spec.flip,
        "output": spec.output, "os_cache": True, "jpeg_decode": spec.jpeg_decode, "device": device,
        "epochs": epochs, "min_seconds": min_seconds,
    }
    if spec.kind == "reference":
        return cfg | {"samples": [list(s) for s in samples], "replicate": replicate}
    if beton is None:
        raise ValueError(f"pipeline {spec.name!r} reads a beton: pass beton=")
    return cfg | {"beton": str(beton), "beton_name": spec.beton}


class FirstBatch:
    """Seconds from building a loader (``begin``, just before) to its first batch (``seen``, at every batch)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.seconds: float | None = None

    def begin(self) -> None:
        """The loader is about to be built: ``train_dataloader()``, ``Loader(...)`` or ``DataLoader(...)``."""
        self.start = time.perf_counter()

    def seen(self) -> None:
        """A batch arrived; the first one stops the clock."""
        if self.seconds is None and self.start is not None:
            self.seconds = time.perf_counter() - self.start


def _reference_epochs(cfg: dict[str, Any], first: FirstBatch) -> Callable[[int], int]:
    """The seed's pipeline: ImageFolder -> PIL -> RGB -> center_crop_arr -> flip -> uint8 CHW."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, DistributedSampler

    from writers.crop import center_crop_arr
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
    first.begin()
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], sampler=sampler, num_workers=cfg["workers"],
                        drop_last=True, persistent_workers=True, pin_memory=torch.cuda.is_available())

    def epoch(e: int) -> int:
        sampler.set_epoch(e)
        return _count(loader, first)

    return epoch


def _count(loader: Any, first: FirstBatch | None) -> int:
    """Images of one pass over ``loader``, telling ``first`` of every batch."""
    n = 0
    for _, y in loader:
        n += len(y)
        if first is not None:
            first.seen()
    return n


def _ffcv_epochs(cfg: dict[str, Any], first: FirstBatch) -> Callable[[int], int]:
    """A bare FFCV Loader as its docs suggest: QUASI_RANDOM, FFCV's own flip."""
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

    image = [SimpleRGBImageDecoder()] + ([RandomHorizontalFlip()] if cfg["flip"] else []) + [ToTensor(), ToTorchImage()]
    first.begin()
    loader = Loader(cfg["beton"], batch_size=cfg["batch_size"], num_workers=cfg["workers"], os_cache=True,
                    order=OrderOption.QUASI_RANDOM, seed=0, drop_last=True,
                    pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()], "index": None,
                               "checksum": None})
    return lambda e: _count(loader, first)


def jit_datamodule(cfg: dict[str, Any], num_replicas: int = 1, rank: int = 0) -> Any:
    """jit-ffcv's DataModule on ``cfg``'s beton (train only), set up, as rank ``rank`` of ``num_replicas``."""
    from jit_ffcv.datamodule import JiTDataModule

    mode, quality = mode_quality(cfg["beton_name"])
    dm = JiTDataModule(data_path=str(Path(cfg["beton"]).parent), img_size=cfg["img_size"],
                       batch_size=cfg["batch_size"], num_workers=cfg["workers"], mode=mode, quality=quality,
                       num_replicas=num_replicas, rank=rank, train_beton=cfg["beton"],
                       flip_prob=0.5 if cfg["flip"] else 0.0, output=cfg["output"], os_cache=cfg["os_cache"],
                       buffer_pages=cfg.get("buffer_pages"), device=cfg.get("device"),
                       jpeg_decode=cfg.get("jpeg_decode", "accurate"))
    dm.setup("fit")
    return dm


def _jit_epochs(cfg: dict[str, Any], first: FirstBatch) -> Callable[[int], int]:
    """jit-ffcv's DataModule train loader, defaults except the beton and sizes."""
    dm = jit_datamodule(cfg)
    first.begin()
    return loader_epochs(dm.train_dataloader(), first)


def loader_epochs(loader: Any, first: FirstBatch | None = None) -> Callable[[int], int]:
    """One epoch of a jit-ffcv train loader (``set_epoch``, then every batch); returns the images seen."""

    def epoch(e: int) -> int:
        import torch

        loader.sampler.set_epoch(e)
        n = _count(loader, first)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # count only batches that really arrived on the device
        return n

    return epoch


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Measure one pipeline in this (fresh) process; returns first-batch s, first-epoch s, img/s, peak RSS."""
    build = {"reference": _reference_epochs, "ffcv": _ffcv_epochs, "jit": _jit_epochs}[cfg["kind"]]
    first = FirstBatch()
    with PeakRSS() as rss:
        result = time_pipeline(build(cfg, first), cfg["epochs"], cfg.get("min_seconds", 0.0))
    return result | {"peak_rss_mib": rss.peak, "first_batch_s": first.seconds}


def time_pipeline(iterate_epoch: Callable[[int], int], epochs: int, min_seconds: float) -> dict[str, float]:
    """First-epoch seconds and steady img/s of ``iterate_epoch`` (see :func:`jit_ffcv.bench.measure.time_epochs`)."""
    first, rate = time_epochs(iterate_epoch, epochs, min_seconds)
    return {"first_epoch_s": first, "img_per_s": rate}


def spawn_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`run_child` in a fresh interpreter and return its result."""
    return spawn(cfg)
