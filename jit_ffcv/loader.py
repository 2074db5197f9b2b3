"""An FFCV ``Loader`` that knows its epoch and exposes a sampler-like view of its order.

Lightning advances epochs by calling ``set_epoch`` on ``dataloader.sampler``;
DistributedSampler users inspect shards by iterating it. :class:`JiTLoader`
offers both on top of FFCV's loader, and publishes the epoch to compiled ops
(through an :class:`~jit_ffcv.ops.EpochCell`) before each epoch starts.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from jit_ffcv.checksum import bind_checksums
from jit_ffcv.decode_threads import DecodeThreads
from jit_ffcv.epoch import Decoding, Epoch, serial_codegen
from jit_ffcv.guards import check_devices, check_steps, check_unchanged, file_identity
from jit_ffcv.loader_state import MAX_EPOCH, Spec, check_fields, layout_fingerprint
from jit_ffcv.ops import EpochCell, hand_epoch
from jit_ffcv.resume import ResumeTracker
from jit_ffcv.traversal import ShardedOrder
from writers.checks import is_int
from writers.ffcv_api import AllocationQuery, Loader, stored_field
from writers.metadata import read_metadata


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

    def generate_code(self) -> None:
        """FFCV's code generation, with each op's loop over a batch plain: one thread runs a whole batch."""
        with serial_codegen():
            super().generate_code()

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration of the loader run ``epoch`` (Lightning calls this)."""
        self._loader.set_epoch(epoch)

    def __len__(self) -> int:
        loader = self._loader
        return loader.resume.num_samples(loader.traversal_order, loader.next_epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self._loader.next_traversal_order().tolist())


class JiTLoader(Loader):
    """FFCV ``Loader`` with ``set_epoch``, a ``sampler`` view and an epoch cell for seeded ops.

    Each epoch is an :class:`~jit_ffcv.epoch.Epoch` decoded by the loader's ``num_workers`` decoding threads,
    each a whole batch at a time (the ops' loops are plain, :func:`~jit_ffcv.epoch.serial_codegen`); errors reach
    ``next()`` and closing never hangs. One epoch at a time: starting a new iterator ends the previous one, which
    then raises instead of returning another epoch's batches. The batch buffers are kept from one epoch to the
    next: FFCV allocates fresh ones every epoch and pays a first-touch page fault for every 4 KiB of them, a
    visible cost on short epochs. ``pin_memory=False`` keeps them pageable. A loader forked into a child process
    starts decoding threads of its own there (an iterator started before the fork raises
    :class:`~jit_ffcv.epoch.ForkedLoaderError`).
    """

    #: seconds to wait for an abandoned epoch's thread before giving up buffer reuse
    JOIN_TIMEOUT_S = 10.0
    #: Lightning reads this of every loader; ``None`` makes it look at :attr:`sampler` instead
    batch_sampler = None

    def __init__(self, *args: Any, epoch_cell: EpochCell | None = None, pin_memory: bool = True,
                 **kwargs: Any) -> None:
        args, kwargs = _without_checksum_output(args, kwargs)
        check_devices(kwargs.get("pipelines") or {})
        self.epoch_cell = epoch_cell or EpochCell()
        hand_epoch(kwargs.get("pipelines", args[8] if len(args) > 8 else {}), self.epoch_cell)  # before FFCV's codegen
        self.pin_memory = bool(pin_memory)
        self._buffers: Any = None
        self._running: Epoch | None = None  # the current epoch
        self._decoder: DecodeThreads | None = None  # started at the first epoch
        self.resume = ResumeTracker()  # position in the epoch, for state_dict / load_state_dict
        self._spec: Spec | None = None  # what a state must match, computed at the first state_dict/load_state_dict
        self._epoch_chosen = False  # set_epoch or load_state_dict was called (else FFCV counts epochs from 0)
        super().__init__(*args, **kwargs)
        self.sampler = EpochSampler(self)
        self.graph.allocate_memory = self._allocate_once
        check_steps(self)
        self._identity = file_identity(self.reader.file_name)  # the file this loader's reader and cache opened
        bind_checksums(self.pipeline_specs, self.reader)  # decoders verify each payload (the DataModule may unbind)

    def _allocate_once(self, batch_size: int, slots: int) -> Any:
        """The batch buffers, allocated at the first epoch and reused (FFCV asks at every epoch start)."""
        if self._buffers is None:
            self._buffers = allocate_buffers(self.graph, batch_size, slots, pin=self.pin_memory)
        return self._buffers

    def generate_code(self) -> None:
        """FFCV's code generation, with each op's loop over a batch plain: one thread runs a whole batch."""
        with serial_codegen():
            super().generate_code()

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next (FFCV otherwise counts epochs itself, starting at 0)."""
        if not is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch must be an integer in [0, 2**62], got {epoch!r}")
        self.next_epoch = int(epoch)
        self._epoch_chosen = True

    def next_traversal_order(self) -> np.ndarray:
        """This rank's order for the next epoch (FFCV calls it); a resumed epoch's is its unseen rest."""
        spec = self.resume_spec() if self.resume.applies(self.next_epoch) else None
        return self.resume.order(self.traversal_order, spec, self.next_epoch)

    def __len__(self) -> int:
        """Batches of the next epoch; a resumed one counts the batches delivered before it was interrupted."""
        resumed = self.resume.length(self.resume_spec(), self.next_epoch) if self.resume.applies(self.next_epoch) \
            else None
        return super().__len__() if resumed is None else resumed

    def resume_spec(self) -> Spec:
        """What a state of this loader depends on: its order's options, batching and the beton's layout."""
        if self._spec is None:
            order = self.traversal_order
            shuffle_seed = None
            try:
                shuffle_seed = read_metadata(self.reader.file_name).shuffle_seed
            except (FileNotFoundError, ValueError):  # a beton without a (valid) jit-ffcv sidecar
                pass
            pages = order.sample_pages if isinstance(order, ShardedOrder) and order.kind == "quasi_random" else None
            layout = layout_fingerprint(stored_field(self.reader, "index"), pages)
            self._spec = Spec.of(order, batch_size=self.batch_size, drop_last=self.drop_last, layout=layout,
                                 shuffle_seed=shuffle_seed, beton=str(self.reader.file_name))
        return self._spec

    def state_dict(self) -> dict[str, Any]:
        """Tiny, rank-independent position after the last batch handed out (Lightning checkpoints it)."""
        return self.resume.state_dict(self.resume_spec(), self.next_epoch, self.traversal_order.num_replicas)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next epoch the unseen rest of the saved one, at this loader's world size (see resume.py).

        Refused while an epoch is being iterated: that iterator would go on delivering its own epoch
        while ``state_dict()`` reported the loaded position.
        """
        if self._running is not None and not self._running.forked:
            raise RuntimeError(
                f"load_state_dict while epoch {self._running.epoch} is being iterated: its iterator would go on "
                f"with that epoch; finish the loop or close its iterator (it.close() or del it) first")
        check_fields(state)  # before the spec, which hashes the beton's layout once (~0.1 s at ImageNet scale)
        epoch = self.resume.load_state_dict(state, self.resume_spec(), self.traversal_order.num_replicas)
        self.set_epoch(epoch)

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
        check_unchanged(self.reader.file_name, self._identity)
        epoch = self.next_epoch
        order = self.next_traversal_order()[: len(self) * self.batch_size]
        self.next_epoch += 1
        if self.code is None or self.recompile:
            self.generate_code()
        running = Epoch(Decoding(code=self.code, metadata=self.reader.metadata, memory_manager=self.memory_manager,
                                 allocate=self.graph.allocate_memory, batch_size=self.batch_size,
                                 batches_ahead=self.batches_ahead, num_workers=self.num_workers), order, epoch)
        if self._decoder is None:
            self._decoder = DecodeThreads(owner=self, count=self.num_workers)
        self._decoder.submit(running)
        return running

    def _finish(self, epoch: Epoch) -> None:
        """Stop ``epoch``; if it will not stop, give the next epoch fresh buffers and fresh threads."""
        if epoch.forked:  # its thread runs in the parent process: nothing to stop here
            return
        epoch.close()
        if not epoch.join(self.JOIN_TIMEOUT_S):
            self._buffers = None
            if self._decoder is not None:
                self._decoder.stop()  # it exits once the stuck epoch returns
                self._decoder = None

    def _after_fork(self) -> None:
        """In a forked child, forget the parent's decoding threads and running epoch: they did not come along."""
        if self._decoder is not None and self._decoder.pid != os.getpid():
            self._decoder = None
            if self._running is not None:
                self._running = None  # its iterator raises ForkedLoaderError in this process

    def _warn_if_counting(self) -> None:
        """Warn once if FFCV's own count starts epoch 1 (never set_epoch nor load_state_dict): a resumed run replays."""
        if self._epoch_chosen or self.next_epoch != 1 or getattr(self.traversal_order, "kind", "") == "sequential":
            return
        self._epoch_chosen = True  # once
        warnings.warn(
            "JiTLoader starts epoch 1 but set_epoch was never called: it counts epochs from 0 since it was built, so "
            "a run resumed at a later epoch is replaying epoch 0, 1, ...'s order and flips; call "
            "loader.set_epoch(epoch) (or loader.sampler.set_epoch) before each epoch, on every rank", stacklevel=3)

    def _epoch_batches(self) -> Iterator[Any]:
        self._after_fork()
        self._warn_if_counting()
        if self._running is not None:
            self._finish(self._running)
        if self._buffers is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            # Every stream, not only the consumer's: the last epoch's copy streams may still read
            # or write the buffers (batches decoded ahead and never taken, an abandoned epoch).
            torch.cuda.synchronize()
        self.epoch_cell.set(self.next_epoch)
        epoch = self._running = self._start_epoch()
        position = self.resume.begin(epoch.epoch, self.traversal_order.num_replicas,
                                     sum(len(batch) for batch in epoch.batches))
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




def _without_checksum_output(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """The loader's arguments with ``pipelines["checksum"] = None`` unless given: checked by the decoder, not output.

    FFCV gives every field a pipeline has not named a default one (an extra batch output).
    """
    if len(args) > 8:
        return (*args[:8], {"checksum": None, **(args[8] or {})}, *args[9:]), kwargs
    return args, {**kwargs, "pipelines": {"checksum": None, **(kwargs.get("pipelines") or {})}}


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
