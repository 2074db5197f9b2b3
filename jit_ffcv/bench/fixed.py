"""The loader's fixed cost per batch, and what it leaves N decoding threads.

Measured on a 32 px raw beton, where decoding an image is a 3 KiB copy: the DataModule's time
per batch there is almost all per-batch work (Python, FFCV's step, the hand-over). Each decoding
thread runs whole batches (:mod:`jit_ffcv.epoch`), so one thread's per-batch work overlaps the
others' decoding; what cannot overlap is the part that holds the GIL, at most one batch's worth at
a time. With T the time one thread decodes a batch in, N threads keep
``min(T / (T + fixed), T / (N * fixed))`` of the limit. A one-batch-at-a-time engine (FFCV's: a
parallel loop per batch, then the per-batch work while every thread waits) would keep
``1 / (1 + N * fixed / T)``; the note prints both.
"""

from __future__ import annotations

from collections.abc import Sequence

from jit_ffcv.bench.stats import Spread
from jit_ffcv.bench.stats import threads as threads_text

#: image size of the fixed-cost beton (the DataModule's smallest)
FIXED_SIZE = 32
#: thread counts the estimate is printed for
ESTIMATE_THREADS: tuple[int, ...] = (16, 64)


def fixed_seconds(img_per_s: float, batch_size: int) -> float:
    """Seconds per batch of a run at ``img_per_s`` (on the 32 px raw beton: the fixed cost)."""
    return batch_size / img_per_s


def efficiency(threads: int, fixed_s: float, batch_decode_s: float) -> float:
    """Fraction of the limit ``threads`` threads keep if ``fixed_s`` per batch is not overlapped (fork/join)."""
    return 1.0 / (1.0 + threads * fixed_s / batch_decode_s)


def overlapped_efficiency(threads: int, fixed_s: float, batch_decode_s: float) -> float:
    """Fraction of the limit ``threads`` threads keep when each decodes whole batches (the GIL-held part queues)."""
    return min(batch_decode_s / (batch_decode_s + fixed_s), batch_decode_s / (threads * fixed_s))


def fixed_note(fixed: Spread, batch_size: int, one_core: dict[int, float], threads: int,
               estimate_threads: Sequence[int] = ESTIMATE_THREADS) -> str:
    """One note: the fixed cost, then per size what N threads keep, overlapped (this engine) and not (fork/join).

    ``one_core``: one core's jpg q90 decode rate per size, in the same run.
    """
    parts = [f"Fixed cost per batch (DataModule, {FIXED_SIZE} px raw beton, batch {batch_size}, "
             f"{threads_text(threads)}): {fixed.text(2, 1000, ' ms')}, overlapped with decoding (each thread decodes "
             f"whole batches; only the GIL-held part queues): N threads keep min(T / (T + fixed), T / (N × fixed)) "
             f"of the limit, against 1 / (1 + N × fixed / T) for one batch at a time"]
    for size, rate in sorted(one_core.items()):
        decode_s = batch_size / rate
        now = ", ".join(f"N={n}: {100 * overlapped_efficiency(n, fixed.median, decode_s):.0f}%"
                        for n in estimate_threads)
        before = ", ".join(f"{100 * efficiency(n, fixed.median, decode_s):.0f}%" for n in estimate_threads)
        digits = 0 if decode_s >= 0.01 else 2
        parts.append(f"{size}px (T = {1000 * decode_s:,.{digits}f} ms per batch for one thread): {now} "
                     f"(one batch at a time: {before})")
    return "; ".join(parts) + "."
