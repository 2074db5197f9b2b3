"""An FFCV ``Loader`` that knows its epoch and exposes a sampler-like view of its order.

Lightning advances epochs by calling ``set_epoch`` on ``dataloader.sampler``;
DistributedSampler users inspect shards by iterating it. :class:`JiTLoader`
offers both on top of FFCV's loader, and publishes the epoch to compiled ops
(through an :class:`~jit_ffcv.ops.EpochCell`) before each epoch starts.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from writers.ffcv_api import AllocationQuery, Compiler, Loader
from jit_ffcv.epoch import DecodeThread, Epoch
from jit_ffcv.ops import EpochCell, hand_epoch
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

    Each epoch is an :class:`~jit_ffcv.epoch.Epoch` decoded by the loader's one
    :class:`~jit_ffcv.epoch.DecodeThread` (errors reach ``next()``, closing never hangs), one epoch
    at a time: starting a new iterator ends the previous one, which then raises instead of returning another epoch's batches. The batch buffers are kept from one epoch
    to the next: FFCV allocates fresh ones every epoch and pays a first-touch page fault for every
    4 KiB of them, a visible cost on short epochs. ``pin_memory=False`` keeps them pageable.
    """

    #: seconds to wait for an abandoned epoch's thread before giving up buffer reuse
    JOIN_TIMEOUT_S = 10.0
    #: Lightning reads this of every loader; ``None`` makes it look at :attr:`sampler` instead
    batch_sampler = None

    def __init__(self, *args: Any, epoch_cell: EpochCell | None = None, pin_memory: bool = True,
                 **kwargs: Any) -> None:
        self.epoch_cell = epoch_cell or EpochCell()
        hand_epoch(kwargs.get("pipelines", args[8] if len(args) > 8 else {}), self.epoch_cell)  # before FFCV's codegen
        self.pin_memory = bool(pin_memory)
        self._buffers: Any = None
        self._running: Epoch | None = None  # the current epoch
        self._decoder: DecodeThread | None = None  # started at the first epoch
        self.resume = ResumeTracker()  # position in the epoch, for state_dict / load_state_dict
        super().__init__(*args, **kwargs)
        self.sampler = EpochSampler(self)
        self.graph.allocate_memory = self._allocate_once

    def _allocate_once(self, batch_size: int, slots: int) -> Any:
        """The batch buffers, allocated at the first epoch and reused (FFCV asks at every epoch start)."""
        if self._buffers is None:
            self._buffers = allocate_buffers(self.graph, batch_size, slots, pin=self.pin_memory)
        return self._buffers

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
        epoch ends the previous one if it is still running (they would share buffers), and
        that one's iterator raises from then on.
        """
        return self._epoch_batches()

    def _start_epoch(self) -> Epoch:
        """Start decoding ``next_epoch`` (what FFCV's ``Loader.__iter__`` does)."""
        Compiler.set_num_threads(self.num_workers)
        epoch = self.next_epoch
        order = self.next_traversal_order()[: len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        running = Epoch(self, order, epoch)
        if self._decoder is None:
            self._decoder = DecodeThread(owner=self)
        self._decoder.submit(running)
        return running

    def _finish(self, epoch: Epoch) -> None:
        """Stop ``epoch``; if it will not stop, give the next epoch fresh buffers and a fresh thread."""
        epoch.close()
        if not epoch.join(self.JOIN_TIMEOUT_S):
            self._buffers = None
            if self._decoder is not None:
                self._decoder.stop()  # it exits once the stuck epoch returns
                self._decoder = None

    def _epoch_batches(self) -> Iterator[Any]:
        if self._running is not None:
            self._finish(self._running)
        if self._buffers is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            # Every stream, not only the consumer's: the last epoch's copy streams may still read
            # or write the buffers (batches decoded ahead and never taken, an abandoned epoch).
            torch.cuda.synchronize()
        self.epoch_cell.set(self.next_epoch)
        epoch = self._running = self._start_epoch()
        position = self.resume.begin(self, epoch.epoch, sum(len(batch) for batch in epoch.batches))
        try:
            while True:
                if self._running is not epoch:
                    raise RuntimeError(
                        f"this iterator of epoch {epoch.epoch} was ended by a newer iter(loader): a JiTLoader "
                        f"runs one epoch at a time (epochs share its batch buffers); finish or drop an "
                        f"iterator before starting the next"
                    )
                try:
                    batch = next(epoch)
                except StopIteration:
                    return
                position.batches += 1  # before the yield: the batch is the consumer's from here on
                yield batch
        finally:
            if self._running is epoch:
                self._finish(epoch)
                self._running = None


def allocate_buffers(graph: Any, batch_size: int, slots: int, *, pin: bool) -> dict[str, dict[int, Any]]:
    """FFCV's ``Graph.allocate_memory`` with pinning as asked (FFCV pins whenever it can).

    Each operation's :class:`AllocationQuery` gets ``slots`` batches: one torch tensor per slot
    for torch dtypes (on the query's device), one numpy array of ``slots`` batches otherwise.
    """
    requirements, _ = graph.collect_requirements()
    buffers: dict[str, dict[int, Any]] = defaultdict(dict)
    for kind, by_node in requirements.items():
        for node_id, query in by_node.items():
            if isinstance(query, AllocationQuery):
                buffers[kind][node_id] = _allocate(query, batch_size, slots, pin)
            elif isinstance(query, Sequence):
                buffers[kind][node_id] = tuple(_allocate(q, batch_size, slots, pin) for q in query)
            else:
                buffers[kind][node_id] = None
    return buffers


def _allocate(query: AllocationQuery, batch_size: int, slots: int, pin: bool) -> Any:
    """Buffers of one query; pinned only if ``pin`` and CUDA is there to pin for."""
    pin = pin and torch.cuda.is_available()
    if isinstance(query.dtype, torch.dtype):
        tensors = [torch.empty(batch_size, *query.shape, dtype=query.dtype, device=query.device)
                   for _ in range(slots)]
        return [t.pin_memory() if pin and t.device.type == "cpu" else t for t in tensors]
    dtype = torch.from_numpy(np.empty(0, dtype=query.dtype)).dtype
    array = torch.empty(slots, batch_size, *query.shape, dtype=dtype)
    return (array.pin_memory() if pin else array).numpy()
