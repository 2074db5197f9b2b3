"""What a ``jit-ffcv bench`` run will cost, printed before it starts: fresh processes, rough time, disk."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

#: stored bytes per pixel of each beton (jpg: measured on real ImageNet crops, 4:2:0; raw: 3 bytes)
BYTES_PER_PIXEL = {"jpg90": 0.34, "jpg95": 0.48, "raw": 3.0}
#: seconds a fresh child spends before its first timed image on a 2-core box (interpreter, imports, numba)
CHILD_START_S = 12.0
#: img/s of each kind of pipeline at 256 px per decoding thread on a 2-core box (rough; scaled by pixels)
RATE_256 = {"reference": 160.0, "ffcv": 1500.0, "jit": 2000.0}
#: the ImageNet-size betons of --scale (N and N/10 samples at 256 px q90)
SCALE_BYTES = 31e9


def beton_bytes(name: str, size: int, samples: int) -> float:
    """Rough size of a beton of ``samples`` ``size`` px images stored as ``name``."""
    return BYTES_PER_PIXEL[name] * size * size * samples


def estimate(args: argparse.Namespace, kinds: Sequence[tuple[str, str | None]], source_samples: int,
             replicate: int, rows_per_size: int) -> tuple[float, float]:
    """(seconds, bytes) of a full run: ``kinds`` are (kind, beton) of each row, ``rows_per_size`` children per round."""
    samples = source_samples * replicate
    seconds, disk = 0.0, 0.0
    for size in args.sizes:
        scale = (256 / size) ** 2
        for kind, beton in kinds:
            rate = RATE_256[kind] * scale * args.workers * (0.5 if beton == "raw" and kind == "reference" else 1.0)
            epochs = 2 if kind == "reference" else args.epochs
            seconds += args.repeat * (CHILD_START_S + max(args.min_seconds, epochs * samples / rate))
        for beton in sorted({b for _, b in kinds if b}):
            disk += beton_bytes(beton, size, samples + source_samples)
            seconds += args.repeat * 2 * 1.5  # the limits: one core, then N threads
    if not args.skip_writer:
        disk += sum(beton_bytes("jpg90", s, 900) for s in args.sizes) * 2 + beton_bytes("raw", args.sizes[0],
                                                                                      24 * source_samples)
        seconds += sum(2 * 900 / (160 * 256 / s) for s in args.sizes) + 3 * CHILD_START_S  # writer: 2 runs
    return seconds, disk


def cost_line(seconds: float, disk: float, children: int) -> str:
    """The line printed before a run starts."""
    return (f"jit-ffcv bench: {children} fresh processes; roughly {seconds / 60:.0f} min on a 2-core box (less with "
            f"more cores) and {disk / 1e9:.1f} GB under --out (betons, kept for the next run)")
