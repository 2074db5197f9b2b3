"""How local an order's reads are: the pages it touches, and how many it keeps open at once."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["PageOf", "pages_touched", "max_open_pages"]

PageOf = Mapping[int, int] | np.ndarray


def _pages_of(order: np.ndarray, page_of: PageOf) -> np.ndarray:
    order = np.asarray(order, dtype=np.int64)
    if isinstance(page_of, Mapping):
        return np.fromiter((page_of[int(s)] for s in order), dtype=np.int64, count=len(order))
    return np.asarray(page_of, dtype=np.int64)[order]


def pages_touched(order: np.ndarray, page_of: PageOf) -> int:
    """Number of distinct pages a rank's ``order`` reads (``page_of``: sample id -> page)."""
    return int(len(np.unique(_pages_of(order, page_of))))


def max_open_pages(order: np.ndarray, page_of: PageOf) -> int:
    """Max number of pages simultaneously open; a page is open from its first to its last sample.

    This is the working set a page cache needs so that no page is read twice.
    """
    pages = _pages_of(order, page_of)
    if len(pages) == 0:
        return 0
    _, first = np.unique(pages, return_index=True)
    _, last_rev = np.unique(pages[::-1], return_index=True)
    last = len(pages) - 1 - last_rev
    delta = np.zeros(len(pages) + 1, dtype=np.int64)
    np.add.at(delta, first, 1)
    np.add.at(delta, last + 1, -1)
    return int(np.cumsum(delta).max())
