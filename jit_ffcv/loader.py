"""An FFCV ``Loader`` that knows its epoch and exposes a sampler-like view of its order.

Lightning advances epochs by calling ``set_epoch`` on ``dataloader.sampler``;
DistributedSampler users inspect shards by iterating it. :class:`JiTLoader`
offers both on top of FFCV's loader, and publishes the epoch to compiled ops
(through an :class:`~jit_ffcv.ops.EpochCell`) before each epoch starts.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from jit_ffcv._ffcv import Loader
from jit_ffcv.ops import EpochCell
from jit_ffcv.resume import ResumeTracker


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
        return self._loader.resume.num_samples(self._loader)

    def __iter__(self) -> Iterator[int]:
        return iter(self._loader.next_traversal_order().tolist())


class JiTLoader(Loader):
    """FFCV ``Loader`` with ``set_epoch``, a ``sampler`` view and an epoch cell for seeded ops.

    It also keeps FFCV's batch buffers from one epoch to the next: FFCV allocates
    ``(batches_ahead + 2) * batch_size`` fresh images every epoch and pays a
    first-touch page fault for every 4 KiB of them, a visible cost on short epochs.
    """

    #: seconds to wait for an abandoned epoch's thread before giving up buffer reuse
    JOIN_TIMEOUT_S = 10.0

    def __init__(self, *args: Any, epoch_cell: EpochCell | None = None, **kwargs: Any) -> None:
        self.epoch_cell = epoch_cell or EpochCell()
        self._buffers: Any = None
        self._running: Any = None  # the current epoch's FFCV EpochIterator (a thread)
        self.resume = ResumeTracker()  # position in the epoch, for state_dict / load_state_dict
        super().__init__(*args, **kwargs)
        self.sampler = EpochSampler(self)
        allocate = self.graph.allocate_memory

        def allocate_once(batch_size: int, batches_ahead: int) -> Any:
            # FFCV's EpochIterator calls this at every epoch start.
            if self._buffers is None:
                self._buffers = allocate(batch_size, batches_ahead)
            return self._buffers

        self.graph.allocate_memory = allocate_once

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next (FFCV otherwise counts epochs itself, starting at 0)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch!r}")
        self.next_epoch = int(epoch)

    def next_traversal_order(self) -> np.ndarray:
        """This rank's order for the next epoch (FFCV calls it); a resumed epoch's is its unseen rest."""
        return self.resume.order(self)

    def __len__(self) -> int:
        """Batches of the next epoch; a resumed one counts the batches delivered before it was interrupted."""
        resumed = self.resume.length(self)
        return super().__len__() if resumed is None else resumed

    def state_dict(self) -> dict[str, Any]:
        """Tiny, rank-independent position after the last batch handed out (Lightning checkpoints it)."""
        return self.resume.state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next epoch the unseen rest of the saved one, at this loader's world size (see resume.py)."""
        self.resume.load_state_dict(self, state)

    def __iter__(self) -> Iterator[Any]:
        """Batches of the next epoch; the epoch starts lazily, at the first ``next``.

        Lightning calls ``iter()`` once only to check iterability, and creates the first
        epoch's iterator *before* calling ``sampler.set_epoch(0)``; starting eagerly would
        consume an epoch, leave a decoding thread behind and run a stale epoch. Starting an
        epoch ends the previous one if it is still running (they would share buffers).
        """
        return self._epoch_batches()

    def _finish(self, epoch: Any) -> None:
        """Stop ``epoch``'s thread; if it will not stop, give the next epoch fresh buffers."""
        epoch.close()
        epoch.join(self.JOIN_TIMEOUT_S)
        if epoch.is_alive():
            self._buffers = None

    def _epoch_batches(self) -> Iterator[Any]:
        if self._running is not None:
            self._finish(self._running)
        if self._buffers is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.current_stream().synchronize()  # the last epoch's batches may still be in use
        self.epoch_cell.set(self.next_epoch)
        epoch = self._running = super().__iter__()
        position = self.resume.begin(self, self.next_epoch - 1, len(epoch.order))
        try:
            for batch in epoch:
                position.batches += 1  # before the yield: the batch is the consumer's from here on
                yield batch
        finally:
            self._finish(epoch)
            if self._running is epoch:
                self._running = None
