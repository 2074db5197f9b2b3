"""The decode limit: what N threads decoding stored payloads at the same time reach, with no loader around them.

Two figures, side by side in every report. ``one core × N`` is one thread's rate times N: it
ignores shared caches, memory bandwidth, SMT siblings and turbo, so it overstates what N cores
do together. The honest limit runs N plain Python threads at once (started by a barrier), each
calling a ``nogil`` numba loop over its own disjoint slice of the payloads; that is the call
jit-ffcv's decoder makes per image (:func:`jit_ffcv.jpeg.decode_rgb`, accurate IDCT unless
asked; FFCV's ``memcpy`` for raw), with no loader machinery, so no loader can beat it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: target seconds of one nogil call: long enough that re-taking the GIL between calls costs nothing measurable
CHUNK_SECONDS = 0.002


@dataclass(frozen=True)
class Payloads:
    """Stored payloads in one flat buffer (``flat[offsets[i]:offsets[i + 1]]`` is payload ``i``)."""

    flat: np.ndarray
    offsets: np.ndarray
    img_size: int
    jpg: bool

    @classmethod
    def of(cls, payloads: Sequence[bytes], img_size: int, jpg: bool) -> Payloads:
        """Pack ``payloads`` (JPEG or raw bytes of ``img_size`` px images)."""
        flat = np.frombuffer(b"".join(payloads), dtype=np.uint8)
        offsets = np.cumsum([0] + [len(p) for p in payloads]).astype(np.int64)
        return cls(flat, offsets, img_size, jpg)

    @classmethod
    def read(cls, beton: Path, limit: int | None = 600) -> Payloads:
        """The first ``limit`` payloads stored in ``beton`` (all if None)."""
        from writers.beton import read_payloads
        from writers.metadata import read_metadata

        meta = read_metadata(beton)
        return cls.of(read_payloads(beton, limit=limit)[0], meta.img_size, meta.mode == "jpg")

    def __len__(self) -> int:
        return len(self.offsets) - 1


@functools.cache
def _kernel() -> Callable[..., None]:
    """The nogil loop ``(flat, offsets, lo, hi, dst, jpg, flags, counts)``: payloads ``lo..hi-1``, counted once each."""
    from numba import njit

    from jit_ffcv.jpeg import decode_rgb
    from writers.ffcv_api import Compiler, memcpy

    copy = Compiler.compile(memcpy)

    @njit(nogil=True)
    def decode_range(flat: np.ndarray, offsets: np.ndarray, lo: int, hi: int, dst: np.ndarray, jpg: bool,
                     flags: int, counts: np.ndarray) -> None:
        for i in range(lo, hi):
            src = flat[offsets[i]:offsets[i + 1]]
            if jpg:
                decode_rgb(src, dst, flags)
            else:
                copy(src, dst)
            counts[i] += 1

    return decode_range


def one_core_rate(payloads: Payloads, seconds: float = 1.5, flags: int = 0) -> float:
    """Images/s one thread decodes (or copies) ``payloads``, whole passes over them, at least ``seconds``."""
    kernel, counts = _kernel(), np.zeros(len(payloads), dtype=np.int64)
    dst = np.empty((payloads.img_size, payloads.img_size, 3), dtype=np.uint8)
    args = (payloads.flat, payloads.offsets, 0, len(payloads), dst, payloads.jpg, flags, counts)
    kernel(*args)  # compile
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        kernel(*args)
        done += len(payloads)
    return done / (time.perf_counter() - start)


@dataclass
class LimitRun:
    """One run of :func:`threaded_rate`: what was decoded, by how many threads, and when each was busy."""

    threads: int
    images: int
    seconds: float
    counts: np.ndarray  # decodes of each payload
    slices: list[tuple[int, int]]  # each thread's payloads [lo, hi)
    starts: list[float]  # perf_counter of each thread's first decode call
    ends: list[float]  # ... and of the end of its last

    @property
    def img_per_s(self) -> float:
        """All threads' images over the wall time from the barrier to the last thread's end."""
        return self.images / self.seconds

    @property
    def overlapped(self) -> bool:
        """Every thread was decoding at one same moment (the latest start is before the earliest end)."""
        return max(self.starts) < min(self.ends)


def slices(n: int, threads: int) -> list[tuple[int, int]]:
    """Disjoint contiguous ``[lo, hi)`` slices of ``range(n)``, one per thread, sizes as equal as possible."""
    if not 1 <= threads <= n:
        raise ValueError(f"the decode limit needs 1 to {n} threads for {n} payloads (one slice each), got {threads}")
    bounds = np.linspace(0, n, threads + 1).round().astype(int).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def threaded_rate(payloads: Payloads, threads: int, seconds: float = 1.5, flags: int = 0,
                  chunk: int | None = None) -> LimitRun:
    """``threads`` threads decoding their own slice of ``payloads`` at the same time, for ``seconds``.

    Each thread decodes its whole slice at least once, then goes round it in chunks of about
    :data:`CHUNK_SECONDS` until the deadline; all start together at a barrier. The rate is every
    image decoded over the time from the barrier to the end of the last thread.
    """
    kernel, parts = _kernel(), slices(len(payloads), threads)
    counts = np.zeros(len(payloads), dtype=np.int64)
    warm = np.empty((payloads.img_size, payloads.img_size, 3), dtype=np.uint8)
    kernel(payloads.flat, payloads.offsets, 0, 1, warm, payloads.jpg, flags, np.zeros_like(counts))  # compile
    if chunk is None:
        chunk = max(1, int(CHUNK_SECONDS * one_core_rate(payloads, seconds=0.05, flags=flags)))
    done, starts, ends = [0] * threads, [0.0] * threads, [0.0] * threads
    barrier, errors = threading.Barrier(threads + 1), []
    deadline = [0.0]

    def work(k: int) -> None:
        lo, hi = parts[k]
        dst = np.empty_like(warm)
        barrier.wait()
        starts[k] = time.perf_counter()
        try:
            pos, first_pass = lo, True
            while first_pass or time.perf_counter() < deadline[0]:
                stop = min(hi, pos + chunk)
                kernel(payloads.flat, payloads.offsets, pos, stop, dst, payloads.jpg, flags, counts)
                done[k] += stop - pos
                pos = lo if stop == hi else stop
                first_pass = first_pass and stop < hi
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)
        ends[k] = time.perf_counter()

    pool = [threading.Thread(target=work, args=(k,), name=f"limit-{k}", daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return LimitRun(threads, sum(done), max(ends) - start, counts, parts, starts, ends)


def limit_rates(beton: Path, threads: int, seconds: float = 1.5, flags: int = 0) -> dict[str, Any]:
    """The honest ``threads``-thread rate of ``beton``'s first payloads, and one core's rate × ``threads``."""
    payloads = Payloads.read(beton, limit=max(600, 16 * threads))
    one = one_core_rate(payloads, seconds=seconds / 2, flags=flags)
    run = threaded_rate(payloads, threads, seconds, flags)
    return {"honest": run.img_per_s, "one_core": one, "one_core_x_n": one * threads, "overlapped": run.overlapped}
