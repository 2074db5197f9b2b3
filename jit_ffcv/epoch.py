"""Epochs of a :class:`~jit_ffcv.loader.JiTLoader`, decoded by one long-lived thread that cannot hang its consumer.

FFCV's ``EpochIterator`` decodes each epoch in a new thread and hands batches over a
queue, but an exception in that thread (a bad seed, a bug in a custom op) kills it
silently and the consumer waits forever; closing it while it runs ahead with FFCV's
process cache (``os_cache=False``) can strand it waiting for pages that will never
be read. :class:`Epoch` keeps FFCV's decoding step (``run_pipeline``) and replaces
the rest: errors travel through the queue to ``next()``, a closed epoch stops before
its next batch, and the decoding thread, not the consumer, releases the epoch's page
cache once it has stopped.

One :class:`DecodeThread` per loader runs its epochs one after another. A fresh
thread per epoch (FFCV's way) costs, with numba's TBB layer, a start of epoch on one
core: TBB's workers joined a new thread's parallel loops only after ~3 batches in
about half the epochs (measured: 2x slower first batches, ~6% of a 3,000-image epoch).

Reused buffers and asynchronous GPU copies: a consumer may copy a batch to the GPU
with ``non_blocking=True`` (Lightning does) and the copy may run long after
``next()`` returned, if the GPU is behind. So a slot is rewritten only after the
GPU has passed the point where the consumer asked for the second batch after it:
``next()`` records a CUDA event on the consumer's stream, and the thread waits for
that event (on the CPU) before decoding into the slot again.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from queue import Empty, Full, Queue
from threading import Event, Thread
from typing import Any

import torch

from writers.ffcv_api import Compiler, chunks, run_pipeline

#: batches a consumer may hold at once: the one in use and the one Lightning prefetches
HELD_BATCHES = 2


class LoaderThreadError(RuntimeError):
    """The decoding thread of an epoch raised; the original exception is chained as ``__cause__``."""


class ForkedLoaderError(RuntimeError):
    """An epoch's iterator was used in a process forked after it started: its decoding thread is not there."""


@dataclass(frozen=True)
class Decoding:
    """What an :class:`Epoch` needs of its loader: the compiled pipeline, the beton's table, memory, options."""

    code: Any  # FFCV's compiled pipeline (``Loader.code``); FFCV's run_pipeline reads it as ``self.loader.code``
    metadata: Any  # the beton's per-sample field table (``Reader.metadata``)
    memory_manager: Any  # FFCV's page cache (``Loader.memory_manager``)
    allocate: Callable[[int, int], Any]  # (batch_size, slots) -> the batch buffers
    batch_size: int
    batches_ahead: int
    num_workers: int


@dataclass(frozen=True)
class _Failure:
    error: BaseException
    batch: int


_END = object()


def _cuda_active() -> bool:
    """True once the process uses CUDA: only then can a consumer have GPU work reading our buffers."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def release_event() -> Any:
    """A CUDA event recorded now on the consumer's current stream (or ``None`` without CUDA in use).

    Everything the consumer queued on that stream before this call (its copies of earlier
    batches included) is complete once the event is. Module-level so tests can substitute it.
    """
    if not _cuda_active():
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream())
    return event


class DecodeThread(Thread):
    """The thread that decodes a loader's epochs, one after another, for the loader's lifetime.

    It holds no reference to the loader between epochs, and stops once the loader is
    garbage-collected (or :meth:`stop` is called), so loaders that are dropped leave no thread.
    """

    def __init__(self, owner: object) -> None:
        super().__init__(daemon=True, name="jit-ffcv decoder")
        self.pid = os.getpid()  # a forked child inherits this object but not the thread
        self._jobs: Queue[Epoch | None] = Queue()
        self.busy = Event()  # set while an epoch runs
        weakref.finalize(owner, self._jobs.put, None)
        self.start()

    def submit(self, epoch: Epoch) -> None:
        """Run ``epoch`` after the ones already submitted."""
        self._jobs.put(epoch)

    def stop(self) -> None:
        """Exit once the submitted epochs have run."""
        self._jobs.put(None)

    def run(self) -> None:
        """Run submitted epochs one after another until :meth:`stop` (or the owner is collected)."""
        while (epoch := self._jobs.get()) is not None:
            self.busy.set()
            try:
                epoch.run()
            finally:
                del epoch  # no reference to the loader while idle
                self.busy.clear()


class Epoch:
    """Decodes one epoch's batches into ``slots`` reused buffers, ``batches_ahead`` ahead of the consumer.

    ``slots = batches_ahead + 1 + HELD_BATCHES``: a batch stays valid until the consumer has
    taken the second batch after it (Lightning keeps the next batch prefetched while a step runs).
    :meth:`run` runs in a :class:`DecodeThread`; the consumer iterates.
    """

    #: seconds between checks of the stop flag while waiting on the queue (bounds close() latency)
    POLL_S = 0.05
    #: FFCV's decoding step of one batch (duck-typed: it reads the attributes set in __init__)
    run_pipeline = run_pipeline

    def __init__(self, decoding: Decoding, order: Sequence[int], epoch: int) -> None:
        self.loader = decoding  # FFCV's run_pipeline reads self.loader.code
        self.epoch = epoch
        self.pid = os.getpid()
        self.num_workers = decoding.num_workers
        self.metadata = decoding.metadata
        self.batches = list(chunks(order, decoding.batch_size))
        self.slots = decoding.batches_ahead + 1 + HELD_BATCHES
        self.output_queue: Queue[Any] = Queue(decoding.batches_ahead)
        self.terminate_event = Event()
        self.finished = Event()  # set once run() has returned: the epoch's buffers are free
        self._done = False
        self._taken = 0  # batches handed to the consumer so far
        self._released: list[Any] = [None] * self.slots  # per slot: event after which it may be rewritten
        self.memory_context = decoding.memory_manager.schedule_epoch(self.batches)
        self.memory_context.__enter__()
        try:
            self.storage_state = self.memory_context.state
            cuda = torch.cuda.is_available()
            self.cuda_streams = [torch.cuda.Stream() if cuda else None for _ in range(self.slots)]
            self.memory_allocations = decoding.allocate(decoding.batch_size, self.slots)
        except BaseException:
            self.memory_context.__exit__(None, None, None)
            raise

    @property
    def forked(self) -> bool:
        """True in a process forked after this epoch started: its decoding thread runs in the parent only."""
        return self.pid != os.getpid()

    # ----------------------------------------------------------- producer side
    def run(self) -> None:
        """Decode every batch (unless closed), then hand over the end marker or the failure."""
        try:
            self._run()
        finally:
            self.finished.set()

    def _run(self) -> None:
        outcome: Any = _END
        b_ix = 0
        try:
            Compiler.set_num_threads(self.num_workers)
            for b_ix, indices in enumerate(self.batches):
                if self.terminate_event.is_set():
                    return
                slot = b_ix % self.slots
                self._wait_released(slot)
                result = self.run_pipeline(b_ix, indices, slot, None)
                if not self._hand_over((slot, result)):
                    return
        except BaseException as error:  # noqa: BLE001 - every failure must reach the consumer
            outcome = _Failure(error, b_ix)
        finally:
            self.memory_context.__exit__(None, None, None)
        self._hand_over(outcome)

    def _wait_released(self, slot: int) -> None:
        """Block until the GPU work that may still read ``slot``'s previous batch has completed.

        The consumer recorded the event when it asked for the second batch after that one;
        it has asked by now: the queue holds at most ``batches_ahead`` batches and
        ``slots = batches_ahead + 1 + HELD_BATCHES``.
        """
        event, self._released[slot] = self._released[slot], None
        if event is not None:
            event.synchronize()

    def _hand_over(self, item: Any) -> bool:
        """Put ``item`` in the queue unless the epoch is closed first; True if it was put."""
        while not self.terminate_event.is_set():
            try:
                self.output_queue.put(item, timeout=self.POLL_S)
                return True
            except Full:
                pass
        return False

    # ----------------------------------------------------------- consumer side
    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self.forked:  # before any lock: the parent's thread may have held one at the fork
            self._done = True
            raise ForkedLoaderError(
                f"this iterator of epoch {self.epoch} was started in process {self.pid}, and this process "
                f"({os.getpid()}) was forked from it: its decoding thread did not come along; start the epoch "
                f"again in this process with iter(loader) (after set_epoch({self.epoch}) to rerun it)")
        if self._taken >= HELD_BATCHES:  # the consumer is done with batch _taken - HELD_BATCHES
            self._released[(self._taken - HELD_BATCHES) % self.slots] = release_event()
        item = self._take()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise LoaderThreadError(
                f"the decoding thread of epoch {self.epoch} failed at batch {item.batch} "
                f"({type(item.error).__name__}: {item.error}); see the chained traceback above"
            ) from item.error
        slot, result = item
        self._taken += 1
        if self.cuda_streams[slot] is not None and _cuda_active():
            torch.cuda.current_stream().wait_stream(self.cuda_streams[slot])  # its device copies, if any
        return result

    def _take(self) -> Any:
        """Next queue item; an error instead of a hang if the thread stopped without one."""
        while True:
            try:
                return self.output_queue.get(timeout=self.POLL_S)
            except Empty:
                if self.finished.is_set() and self.output_queue.empty():
                    self._done = True
                    raise RuntimeError(f"epoch {self.epoch} was closed; start a new one with iter(loader)") from None

    def close(self) -> None:
        """Ask the decoding thread to stop after its current batch (it then releases the page cache itself)."""
        self.terminate_event.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`run` has returned (or ``timeout`` s); True if it has."""
        return self.finished.wait(timeout)
