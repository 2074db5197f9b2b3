"""The benchmark's optional dependencies, checked before anything is measured.

A missing module would otherwise surface minutes into a run, as a child process's
traceback or after every pipeline has been measured (the chart comes last).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

#: the ``bench`` extra of pyproject.toml: module -> what it is used for
BENCH_EXTRA: dict[str, str] = {"matplotlib": "the chart", "psutil": "worker memory"}
#: pip's name of a module where it differs from the module's
PIP_NAMES: dict[str, str] = {"PIL": "pillow"}
INSTALL = 'pip install -e ".[bench]" (or make install)'


class MissingDependencyError(RuntimeError):
    """A module the selected measurements import is not installed."""


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here, in the order given, once each."""
    return [m for m in dict.fromkeys(modules) if importlib.util.find_spec(m) is None]


def require(modules: Iterable[str]) -> None:
    """Raise :class:`MissingDependencyError`, one line naming every missing package and the install command."""
    absent = missing(modules)
    if absent:
        what = " and ".join(PIP_NAMES.get(m, m) + (f" ({BENCH_EXTRA[m]})" if m in BENCH_EXTRA else "") for m in absent)
        verb = "is" if len(absent) == 1 else "are"
        raise MissingDependencyError(f"jit-ffcv bench needs {what}, which {verb} not installed: {INSTALL}")
