"""Option checks shared by the writer, the loader and the DataModule: one line naming the option on bad input.

Each check returns the value normalised (``int``, ``float``, ``bool``) so callers can store what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["is_int", "int_at_least", "int_in_range", "one_of", "flag", "probability"]


def is_int(value: Any) -> bool:
    """Python or numpy integer, not a bool (``True`` is no batch size)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def int_at_least(name: str, value: Any, low: int) -> int:
    """``value`` as an int ``>= low``, else a ValueError naming ``name``."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def int_in_range(name: str, value: Any, low: int, high: int, high_name: str | None = None) -> int:
    """``value`` as an int in ``[low, high)``, else a ValueError naming ``name`` (and ``high_name`` for the bound)."""
    if not is_int(value) or not low <= value < high:
        bound = f"{high_name}={high}" if high_name else str(high)
        raise ValueError(f"{name} must be an integer in [{low}, {bound}), got {value!r}")
    return int(value)


def one_of(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else a ValueError naming ``name`` and the choices."""
    if isinstance(value, bool) or value not in tuple(allowed):
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool if it is one (numpy's too), else a ValueError naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def probability(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1] (a real number, not a string or a bool), else a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)
