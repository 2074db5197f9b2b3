"""The ImageNet-size beton of ``jit-ffcv bench --scale``, and the child processes that build and load it.

Builds an ImageNet-1k-sized train beton (1,281,167 samples, 1,000 classes laid out as ImageFolder
would, stored in the writer's shuffled order) by copying real 256 px q90 payloads, without
decoding. Each build and each loader run happens in a fresh child process, so peak RSS is its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jit_ffcv.bench.memory import own_peak_mib, rss_mib
from jit_ffcv.imagenet import NUM_CLASSES as IMAGENET_CLASSES

BATCH_SIZE: int = 128


def imagenet_labels(num_samples: int, num_classes: int = IMAGENET_CLASSES) -> np.ndarray:
    """ImageFolder label of each folder index: classes in order, sizes as equal as possible (first ones +1)."""
    counts = np.full(num_classes, num_samples // num_classes, dtype=np.int64)
    counts[:num_samples % num_classes] += 1
    return np.repeat(np.arange(num_classes, dtype=np.int64), counts)


def build_scale_beton(src: Path, out: Path, num_samples: int, seed: int = 0) -> Any:
    """Write ``out``: ``num_samples`` samples copied from ``src``'s payloads, ImageNet's class layout, shuffled.

    Stored position ``p`` holds folder index ``perm[p]`` (``sample_permutation(N, seed)``, as the
    writer stores a real dataset), labelled with the simulated ImageFolder class of that index; its
    payload is ``src``'s sample ``perm[p] % len(src)``. No decoding: pages are filled by memory copies
    and written 8 MiB at a time. Returns the published sidecar's metadata.
    """
    from writers.beton_file import partial_beton
    from writers.metadata import BetonMetadata, file_sha256, read_metadata
    from writers.publish import publish
    from writers.readers import read_payloads
    from writers.shuffle import sample_permutation

    if num_samples < 1:
        raise ValueError(f"--scale-samples must be >= 1, got {num_samples!r}")
    src_meta = read_metadata(src)
    payloads, _ = read_payloads(src)
    labels = imagenet_labels(num_samples)
    perm = sample_permutation(num_samples, seed)
    start = time.perf_counter()
    with partial_beton(out, num_samples, src_meta.mode, src_meta.quality or 90) as beton:
        for chunk in np.array_split(perm, max(1, num_samples // 65536)):  # no N-long Python list
            for index, label in zip(chunk.tolist(), labels[chunk].tolist(), strict=True):
                beton.append(payloads[index % len(payloads)], label, src_meta.img_size, index)
    seconds = time.perf_counter() - start
    partial = beton.path
    meta = BetonMetadata(
        split="train", img_size=src_meta.img_size, mode=src_meta.mode, quality=src_meta.quality,
        classes=[f"n{c:08d}" for c in range(IMAGENET_CLASSES)],
        class_counts=np.bincount(labels, minlength=IMAGENET_CLASSES).tolist(), num_samples=beton.count,
        source=f"{src_meta.source} (payloads replicated to ImageNet-1k size by jit_ffcv.bench.scale)",
        sha256=file_sha256(partial), size_bytes=partial.stat().st_size, payload_bytes=beton.payload_bytes,
        seconds=seconds, images_per_second=beton.count / max(seconds, 1e-9), num_workers=1,
        writer_version=src_meta.writer_version, sample_order="shuffled", shuffle_seed=seed,
    )
    publish(partial, out, meta)
    return meta


def source_beton(data_path: str | None, work: Path, workers: int) -> tuple[Path, str]:
    """A 256 px q90 beton of the real sample (else of the synthetic folder), written once into ``work``."""
    from jit_ffcv.bench.data import build_betons, dataset_scan

    scan, source = dataset_scan(data_path, work)
    return build_betons(scan, 256, ["jpg90"], 1, work, workers, progress=False)["jpg90"], source


def child_build(cfg: dict[str, Any]) -> dict[str, Any]:
    """Build in this process, sampling its RSS every 0.1 s (FFCV's import peaks higher than a small write)."""
    import writers.ffcv_api  # noqa: F401 - imports (numba compilation) done before the baseline
    from writers.beton import read_payloads

    read_payloads(cfg["src"])
    before, peak, stop = rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], rss_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    meta = build_scale_beton(Path(cfg["src"]), Path(cfg["out"]), cfg["num_samples"])
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    return {"seconds": seconds, "copy_seconds": meta.seconds, "rss_before_mib": before,
            "peak_rss_mib": max(peak[0], rss_mib()), "size_bytes": meta.size_bytes}


def scale_datamodule(beton: Path, world: int, rank: int, workers: int, os_cache: bool = True) -> Any:
    """The DataModule of the scale measurements: 256 px, train only, rank ``rank`` of ``world``."""
    from jit_ffcv import JiTDataModule

    return JiTDataModule(str(beton.parent), img_size=256, batch_size=BATCH_SIZE, num_workers=workers,
                         pin_memory=False, num_replicas=world, rank=rank, train_beton=str(beton),
                         os_cache=os_cache)


def child_load(cfg: dict[str, Any]) -> dict[str, Any]:
    """Load ``cfg['batches']`` batches in this process: img/s and this process's peak RSS."""
    dm = scale_datamodule(Path(cfg["beton"]), 1, 0, cfg["workers"], os_cache=cfg["os_cache"])
    dm.setup("fit")
    loader = dm.train_dataloader()
    start, seen = time.perf_counter(), 0
    for i, (images, _) in enumerate(loader):
        seen += len(images)
        if i + 1 == cfg["batches"]:
            break
    return {"img_per_s": seen / (time.perf_counter() - start), "peak_rss_mib": own_peak_mib(), "batches": i + 1}


#: the child measurements of ``--scale``, by ``kind`` (run by :mod:`jit_ffcv.bench.child`)
CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"build": child_build, "load": child_load}
