"""The loader's fixed cost per batch, and what it would cost N threads if it is not overlapped with decoding.

Measured on a 32 px raw beton, where decoding an image is a 3 KiB copy: the DataModule's time
per batch there is almost all per-batch work (Python, FFCV's step, the hand-over). If that work
runs while the decoding threads wait, N threads decoding a batch of decode time T each keep
``1 / (1 + N * fixed / T)`` of the limit. The measured efficiency at the bench's own thread count
tells whether it is so: clearly above the estimate means the fixed cost overlaps decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from jit_ffcv.bench.stats import Spread
from jit_ffcv.bench.stats import threads as threads_text

#: image size of the fixed-cost beton (the DataModule's smallest)
FIXED_SIZE = 32
#: thread counts the estimate is printed for
ESTIMATE_THREADS: tuple[int, ...] = (16, 64)
#: measured efficiency this far above the estimate (fraction of the limit) counts as overlapped
OVERLAP_MARGIN = 0.05


def fixed_seconds(img_per_s: float, batch_size: int) -> float:
    """Seconds per batch of a run at ``img_per_s`` (on the 32 px raw beton: the fixed cost)."""
    return batch_size / img_per_s


def efficiency(threads: int, fixed_s: float, batch_decode_s: float) -> float:
    """Fraction of the limit ``threads`` threads keep if ``fixed_s`` per batch is not overlapped."""
    return 1.0 / (1.0 + threads * fixed_s / batch_decode_s)


def fixed_note(fixed: Spread, batch_size: int, one_core: dict[int, float], measured: dict[int, float],
               threads: int, estimate_threads: Sequence[int] = ESTIMATE_THREADS) -> str:
    """One note: the fixed cost, then per size the estimate at ``estimate_threads`` or that it is overlapped.

    ``one_core``: one core's jpg q90 decode rate per size; ``measured``: the DataModule's fraction of the
    honest ``threads``-thread limit per size, in the same run.
    """
    parts = [f"Fixed cost per batch (DataModule, {FIXED_SIZE} px raw beton, batch {batch_size}, "
             f"{threads_text(threads)}): {fixed.text(2, 1000, ' ms')}"]
    for size, rate in sorted(one_core.items()):
        decode_s = batch_size / rate
        at_own = efficiency(threads, fixed.median, decode_s)
        head = f"{size}px (one thread decodes a batch in {1000 * decode_s:,.0f} ms)"
        if size in measured and measured[size] > at_own + OVERLAP_MARGIN:
            parts.append(f"{head}: overlapped: {100 * measured[size]:.0f}% of the limit measured at "
                         f"{threads_text(threads)} against {100 * at_own:.0f}% if it were not")
        else:
            estimates = ", ".join(f"N={n}: {100 * efficiency(n, fixed.median, decode_s):.0f}%"
                                  for n in estimate_threads)
            parts.append(f"{head}: not overlapped, 1 / (1 + N × fixed / batch decode time) = {estimates}")
    return "; ".join(parts) + "."
