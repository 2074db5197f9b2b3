"""An FFCV ``Loader`` that knows its epoch and exposes a sampler-like view of its order.

Lightning advances epochs by calling ``set_epoch`` on ``dataloader.sampler``;
DistributedSampler users inspect shards by iterating it. :class:`JiTLoader`
offers both on top of FFCV's loader, and publishes the epoch to compiled ops
(through an :class:`~jit_ffcv.ops.EpochCell`) before each epoch starts.
"""

from __future__ import annotations

from typing import Any, Iterator

from ffcv.loader import Loader

from jit_ffcv.ops import EpochCell


class EpochSampler:
    """Sampler-like view of a :class:`JiTLoader`'s order: ``set_epoch``, ``len``, ``iter``.

    Iterating yields this rank's sample indices for the loader's next epoch, before
    batching, exactly in the order the batches deliver them (less a dropped
    trailing partial batch), as iterating a ``DistributedSampler`` would.
    """

    def __init__(self, loader: JiTLoader) -> None:
        self._loader = loader

    @property
    def epoch(self) -> int:
        """The epoch the next iteration of the loader will run."""
        return int(self._loader.next_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration of the loader run ``epoch`` (Lightning calls this)."""
        self._loader.set_epoch(epoch)

    def __len__(self) -> int:
        return int(self._loader.traversal_order.num_samples())

    def __iter__(self) -> Iterator[int]:
        return iter(self._loader.traversal_order.sample_order(self.epoch).tolist())


class JiTLoader(Loader):
    """FFCV ``Loader`` with ``set_epoch``, a ``sampler`` view and an epoch cell for seeded ops."""

    def __init__(self, *args: Any, epoch_cell: EpochCell | None = None, **kwargs: Any) -> None:
        self.epoch_cell = epoch_cell or EpochCell()
        super().__init__(*args, **kwargs)
        self.sampler = EpochSampler(self)

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next (FFCV otherwise counts epochs itself, starting at 0)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        self.next_epoch = int(epoch)

    def __iter__(self) -> Iterator[Any]:
        """Batches of the next epoch; the epoch starts lazily, at the first ``next``.

        Lightning calls ``iter()`` once only to check iterability, and creates the first
        epoch's iterator *before* calling ``sampler.set_epoch(0)``; starting eagerly would
        consume an epoch, leave a decoding thread behind and run a stale epoch.
        """
        return self._epoch_batches()

    def _epoch_batches(self) -> Iterator[Any]:
        self.epoch_cell.set(self.next_epoch)
        # yield from: closing an abandoned epoch closes FFCV's EpochIterator (stops its thread).
        yield from super().__iter__()
