"""Measurement: epoch timing, peak memory, one core's decode/copy bound, writer rates, machine info."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from writers.beton import read_payloads, write_beton
from writers.folder import FolderScan


def machine_info(workers: int) -> dict[str, Any]:
    """CPU model, cores, RAM and library versions: printed with every table."""
    import lightning
    import numba
    import PIL
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kib = 0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": workers,
        "ram_gib": round(mem_kib / 2**20, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ffcv": importlib.metadata.version("ffcv"),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "lightning": lightning.__version__,
    }


def writer_rates(scan: FolderScan, img_size: int, work: Path, workers: Sequence[int],
                 min_images: int = 900) -> dict[int, float]:
    """Writer img/s (jpg q90, whole run: pool start, crop, encode, write, SHA-256) per worker count."""
    times = -(-min_images // len(scan.samples))
    scan = FolderScan(scan.root, scan.classes, scan.samples * times, scan.ignored)
    rates = {}
    for n in workers:
        meta = write_beton(scan, work / f"writer_{img_size}_{n}.beton", img_size=img_size, mode="jpg", quality=90,
                           num_workers=n, progress=False, force=True)  # re-measured on every run
        rates[n] = meta.images_per_second
    return rates


def payload_rate_one_core(payloads: Sequence[bytes], size: int, jpg: bool, seconds: float = 1.5,
                          jpeg_decode: str = "accurate") -> float:
    """Images/s one core decodes (JPEG, :func:`jit_ffcv.jpeg.decode_rgb`) or copies (raw) ``payloads``.

    The loop is numba-compiled and single-threaded, exactly the call jit-ffcv's decoder
    makes per image (accurate IDCT unless ``jpeg_decode="fast"``), so it is the per-core
    ceiling of a loader that delivers these pixels.
    """
    from numba import njit

    from writers.ffcv_api import Compiler, memcpy
    from jit_ffcv.jpeg import decode_flags, decode_rgb

    flat = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    offsets = np.cumsum([0] + [len(p) for p in payloads]).astype(np.int64)
    dst = np.empty((size, size, 3), dtype=np.uint8)
    copy_c, flags = Compiler.compile(memcpy), decode_flags(jpeg_decode)

    @njit(nogil=True)
    def one_pass(flat: np.ndarray, offsets: np.ndarray, dst: np.ndarray) -> None:
        for i in range(len(offsets) - 1):
            src = flat[offsets[i] : offsets[i + 1]]
            if jpg:
                decode_rgb(src, dst, flags)
            else:
                copy_c(src, dst)

    one_pass(flat, offsets, dst)  # compile
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one_pass(flat, offsets, dst)
        done += len(payloads)
    return done / (time.perf_counter() - start)


def decode_rate_one_core(beton: Path, seconds: float = 1.5, jpeg_decode: str = "accurate") -> float:
    """:func:`payload_rate_one_core` of the first 600 images stored in ``beton``."""
    from writers.metadata import read_metadata

    meta = read_metadata(beton)
    payloads, _ = read_payloads(beton, limit=600)
    return payload_rate_one_core(payloads, meta.img_size, meta.mode == "jpg", seconds, jpeg_decode)


def _own_peak_mib() -> float:
    """This process's peak resident memory since its ``exec``, from /proc (Linux) or psutil."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRSS:
    """Peak memory of this process plus its worker processes, in MiB.

    This process's own peak is the kernel's exact high-water mark (``VmHWM``; not
    ``ru_maxrss``, which survives ``exec`` and would report the parent's size);
    workers (the reference's DataLoader processes) are sampled every 0.5 s.
    Sampling more often costs measurable CPU (psutil walks /proc).
    """

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        own = _own_peak_mib()
        workers = 0
        for child in self._proc.children(recursive=True):
            try:
                workers += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                pass
        return own + workers / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def _time_epochs(iterate_epoch: Callable[[int], int], epochs: int, min_seconds: float) -> tuple[float, float]:
    """(first epoch seconds, steady img/s over at least ``epochs - 1`` epochs and ``min_seconds``)."""
    start = time.perf_counter()
    iterate_epoch(0)
    first = time.perf_counter() - start
    images, epoch, start = 0, 1, time.perf_counter()
    while epoch < epochs or time.perf_counter() - start < min_seconds:
        images += iterate_epoch(epoch)
        epoch += 1
    return first, images / (time.perf_counter() - start)
