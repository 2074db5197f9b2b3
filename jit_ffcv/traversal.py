"""FFCV ``TraversalOrder`` classes over :func:`jit_ffcv.order.epoch_order`, usable as ``Loader(order=...)``.

Usage::

    Loader(path, batch_size=256, order=QuasiRandomOrder(num_replicas=W, rank=r), seed=0, ...)
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from jit_ffcv.order import check_sharding, epoch_order, samples_per_rank
from writers.checks import flag, int_at_least
from writers.ffcv_api import TraversalOrder

if TYPE_CHECKING:
    from writers.ffcv_api import Loader

__all__ = ["ShardedOrder", "QuasiRandomOrder", "RandomOrder", "SequentialOrder", "ORDERS", "make_order",
           "reader_sample_pages"]

_T = TypeVar("_T", bound="ShardedOrder")


def reader_sample_pages(reader: Any) -> np.ndarray:
    """First page of every sample's stored data, from an FFCV ``Reader``'s allocation table (-1: none)."""
    table = reader.alloc_table
    none = np.iinfo(np.int64).max
    pages = np.full(int(reader.num_samples), none, dtype=np.int64)
    np.minimum.at(pages, table["sample_id"].astype(np.int64), (table["ptr"] // int(reader.page_size)).astype(np.int64))
    pages[pages == none] = -1
    return pages


def _loader_sample_pages(loader: Loader, indices: np.ndarray) -> np.ndarray:
    """First page of each of ``indices`` in the loader's beton.

    Samples with no allocation (e.g. only scalar fields) get distinct negative
    pseudo-pages, so ``quasi_random`` treats them like ``random``.
    """
    found = reader_sample_pages(loader.reader)[indices.astype(np.int64)]
    return np.where(found >= 0, found, -1 - np.arange(len(indices), dtype=np.int64))


class ShardedOrder(TraversalOrder):
    """Config object for one ordering kind; calling it with a loader returns a bound copy.

    ``drop_last`` here is the *sharding* drop (N//W per rank, like DistributedSampler);
    the Loader's own ``drop_last`` still drops the last partial batch. ``loader.distributed``
    is ignored: sharding is set by ``num_replicas``/``rank`` only. The bound copy keeps no
    reference to the loader (no loader <-> order cycle).
    """

    kind: ClassVar[str]

    def __init__(self, *, num_replicas: int = 1, rank: int = 0, drop_last: bool = False) -> None:
        # Deliberately not TraversalOrder.__init__: there is no loader yet (see __call__).
        self.num_replicas, self.rank = check_sharding(num_replicas, rank)
        self.drop_last = flag("drop_last", drop_last)
        self.buffer_pages: int | None = None
        self.indices: np.ndarray | None = None
        self.sample_pages: np.ndarray | None = None
        self.seed: int | None = None

    # FFCV 1.0.2 quirk: Loader does `order(self)` on a TraversalOrder *instance*, so we bind here.
    def __call__(self: _T, loader: Loader) -> _T:
        """Return a shallow copy bound to ``loader`` (the config object stays reusable)."""
        bound = copy.copy(self)
        bound.indices = np.asarray(loader.indices)
        bound.seed = loader.seed
        bound.sample_pages = _loader_sample_pages(loader, bound.indices)
        bound._bind_extra(loader)
        return bound

    def _bind_extra(self, loader: Loader) -> None:
        """Hook for kind-specific options resolved from the loader."""

    def _require_bound(self) -> np.ndarray:
        if self.indices is None:
            raise RuntimeError(
                f"{type(self).__name__} is a config object; pass it as Loader(order=...) "
                "or call it with a loader first"
            )
        return self.indices

    def sample_order(self, epoch: int) -> np.ndarray:
        """This rank's sample ids for ``epoch`` (see :func:`epoch_order`)."""
        indices = self._require_bound()
        return epoch_order(
            self.sample_pages, indices, kind=self.kind, num_replicas=self.num_replicas,
            rank=self.rank, seed=self.seed, epoch=epoch, drop_last=self.drop_last,
            buffer_pages=self.buffer_pages or 1,
        )

    def num_samples(self) -> int:
        """Per-rank number of samples per epoch (ceil(N/W), or N//W with drop_last)."""
        return samples_per_rank(len(self._require_bound()), self.num_replicas, self.drop_last)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_replicas={self.num_replicas}, rank={self.rank}, "
                f"drop_last={self.drop_last})")


class QuasiRandomOrder(ShardedOrder):
    """Page-local random order: contiguous shard of a page-shuffled sequence + rolling page buffer.

    Use with ``os_cache=False`` or huge datasets: each rank reads ~1/W of the pages.
    ``buffer_pages=None`` means ``2 * loader.batch_size`` like FFCV's QUASI_RANDOM.
    """

    kind: ClassVar[str] = "quasi_random"

    def __init__(self, *, num_replicas: int = 1, rank: int = 0, drop_last: bool = False,
                 buffer_pages: int | None = None) -> None:
        super().__init__(num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        self._buffer_pages_option = None if buffer_pages is None else int_at_least("buffer_pages", buffer_pages, 1)
        self.buffer_pages = self._buffer_pages_option

    def _bind_extra(self, loader: Loader) -> None:
        self.buffer_pages = self._buffer_pages_option or 2 * int(loader.batch_size)

    def __repr__(self) -> str:
        return (f"QuasiRandomOrder(num_replicas={self.num_replicas}, rank={self.rank}, "
                f"drop_last={self.drop_last}, buffer_pages={self._buffer_pages_option})")


class RandomOrder(ShardedOrder):
    """Uniform random permutation per epoch, sharded contiguously across ranks."""

    kind: ClassVar[str] = "random"


class SequentialOrder(ShardedOrder):
    """Indices in their given order, sharded contiguously across ranks (e.g. for validation)."""

    kind: ClassVar[str] = "sequential"


#: The order classes by their ``kind`` (the DataModule's and ``jit-ffcv trace``'s ``order`` option).
ORDERS: dict[str, type[ShardedOrder]] = {cls.kind: cls for cls in (QuasiRandomOrder, RandomOrder, SequentialOrder)}


def make_order(kind: str, *, num_replicas: int, rank: int, drop_last: bool,
               buffer_pages: int | None = None) -> ShardedOrder:
    """This rank's order of ``kind``; ``buffer_pages`` is quasi_random's own option (ignored by the others)."""
    extra = {"buffer_pages": buffer_pages} if kind == "quasi_random" else {}
    return ORDERS[kind](num_replicas=num_replicas, rank=rank, drop_last=drop_last, **extra)
