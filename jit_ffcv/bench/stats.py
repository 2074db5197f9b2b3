"""Repeated measurements: the median and the spread (min-max) of R interleaved rounds, and how they print."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median of some measurements, with their smallest and largest."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The median and min-max of ``values`` (at least one)."""
        if not values:
            raise ValueError("a spread needs at least one measurement")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)), len(values))

    def text(self, digits: int = 0, scale: float = 1.0, suffix: str = "") -> str:
        """``median`` alone for one measurement, else ``median (lo-hi)``; values times ``scale``."""
        def f(x: float) -> str:
            return f"{x * scale:,.{digits}f}{suffix}"

        return f(self.median) if self.n == 1 else f"{f(self.median)} ({f(self.lo)}–{f(self.hi)})"


def ratios(values: Sequence[float], bases: Sequence[float]) -> Spread:
    """Spread of ``values[r] / bases[r]``: each round against the base measured in the same round."""
    if len(values) != len(bases):
        raise ValueError(f"{len(values)} values against {len(bases)} bases: rounds must pair up")
    return Spread.of([v / b for v, b in zip(values, bases, strict=True)])


def threads(n: int) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{n} thread{'' if n == 1 else 's'}"
