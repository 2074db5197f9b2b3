"""FFCV's process-cache page schedule, made safe for several batches decoded at once.

FFCV's process cache (``os_cache=False``) reads the beton's pages into a bounded set of page
slots on a schedule computed from the epoch's batches: when batch ``b`` starts, the slots of
pages last used by batch ``b - 1`` are reused for pages needed a few batches later. With one
decoding thread batch ``b - 1`` is finished by then; with several threads it may still be
reading those pages. So the schedule is computed on batches that also name the pages of the
``lag`` batches before them: a page's slot is reused only once every batch that may still be
in flight (at most ``lag``: the epoch's buffer slots) is past it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from writers.ffcv_api import ProcessCacheManager

__all__ = ["in_flight_batches"]


def in_flight_batches(manager: object, batches: Sequence[np.ndarray], lag: int) -> Sequence[np.ndarray]:
    """The batches to schedule ``manager``'s pages on: ``batches`` themselves, except for the process cache.

    There, batch ``b`` is given the samples of ``b`` and one sample per distinct page set of each of
    the ``lag`` batches before it (the same pages, far fewer samples to look up).
    """
    if not isinstance(manager, ProcessCacheManager) or lag < 1:
        return batches
    pages_of = manager.sample_to_pages
    distinct = [_one_per_page_set(batch, pages_of) for batch in batches]
    return [np.concatenate([batch, *distinct[max(0, b - lag):b]]) for b, batch in enumerate(batches)]


def _one_per_page_set(batch: np.ndarray, pages_of: dict[int, set[int]]) -> np.ndarray:
    """Samples of ``batch`` that together need every page the batch needs, one per new page set."""
    seen: set[int] = set()
    kept = []
    for sample in batch.tolist():
        pages = pages_of[sample]
        if not pages <= seen:
            seen |= pages
            kept.append(sample)
    return np.asarray(kept, dtype=batch.dtype)
