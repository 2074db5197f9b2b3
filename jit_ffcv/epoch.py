"""Epochs of a :class:`~jit_ffcv.loader.JiTLoader`: several whole batches in flight, delivered in order.

FFCV's ``EpochIterator`` has one thread run each batch as a parallel loop over its images,
then a join, batch after batch: every thread waits at every batch boundary for the slowest
image, and none decodes while that one thread runs the batch's Python steps (measured here:
79-82% of the 2-thread limit, and a fixed 0.35 ms per batch that would cap 64 threads at
63%). Here each of the loader's ``num_workers`` threads (:mod:`jit_ffcv.decode_threads`) decodes
*whole batches* (the ops' loops are plain, :func:`serial_codegen`), claiming the next batch of the
epoch as soon as it has handed over its last one; batches are delivered in order, so the
order, flips and pixels are the same for every thread count. Compiled code releases the
GIL, so one thread's Python steps overlap the others' decoding.

What stays from the one-thread design: an exception in a decoding thread travels to
``next()`` (the batches before it are delivered first), a closed epoch stops its threads
before their next batch, the threads, not the consumer, release the epoch's page cache
once they have stopped, and the threads live as long as their loader.

Reused buffers and asynchronous GPU copies: a consumer may copy a batch to the GPU with
``non_blocking=True`` (Lightning does) and the copy may run long after ``next()`` returned.
So a slot is rewritten only after the GPU has passed the point where the consumer asked for
the second batch after it: ``next()`` records a CUDA event on the consumer's stream, and the
thread that claims the slot waits for that event (on the CPU) before decoding into it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from threading import Condition, Event, Lock
from typing import Any

import torch

from jit_ffcv.page_schedule import in_flight_batches
from writers.ffcv_api import Compiler, chunks, run_pipeline

#: batches a consumer may hold at once: the one in use and the one Lightning prefetches
HELD_BATCHES = 2


class LoaderThreadError(RuntimeError):
    """A decoding thread of an epoch raised; the original exception is chained as ``__cause__``."""


class ForkedLoaderError(RuntimeError):
    """An epoch's iterator was used in a process forked after it started: its decoding threads are not there."""


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


def slots_for(batches_ahead: int, workers: int) -> int:
    """Batch buffers an epoch needs: every thread's batch in flight (at least ``batches_ahead``), one, the held ones."""
    return max(batches_ahead, workers) + 1 + HELD_BATCHES


@contextlib.contextmanager
def serial_codegen() -> Iterator[None]:
    """Generate the ops' code with plain loops: each decoding thread runs a whole batch (FFCV reads the count then)."""
    threads = Compiler.num_threads
    Compiler.num_threads = 1
    try:
        yield
    finally:
        Compiler.num_threads = threads


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


class _PagesRequested:
    """What FFCV's ``run_pipeline`` calls as ``memory_context``: a batch's pages were requested when it was claimed."""

    @staticmethod
    def start_batch(batch: int) -> None:
        """Nothing left to do (see :meth:`Epoch._claim`)."""


class Epoch:
    """Decodes one epoch's batches into ``slots`` reused buffers with ``num_workers`` threads, delivers them in order.

    Batch ``b`` goes to slot ``b % slots`` and is claimed (in order) once the consumer has released
    the batch that slot held before and taken all but ``slots - HELD_BATCHES`` of the batches before
    it: ``slots`` (:func:`slots_for`) leaves room for one batch per thread (at least ``batches_ahead``),
    one ready, and the ``HELD_BATCHES`` the consumer holds (Lightning keeps the next batch prefetched
    while a step runs). With one thread that is FFCV's ``batches_ahead`` ready batches plus one decoding.
    :meth:`work` runs in each of the loader's decoding threads (:mod:`jit_ffcv.decode_threads`).
    """

    #: seconds between checks of the stop flag while waiting (bounds close() latency)
    POLL_S = 0.05
    #: FFCV's decoding step of one batch (duck-typed: it reads the attributes set in __init__)
    run_pipeline = run_pipeline

    def __init__(self, decoding: Decoding, order: Sequence[int], epoch: int) -> None:
        self.loader = decoding  # FFCV's run_pipeline reads self.loader.code
        self.epoch = epoch
        self.pid = os.getpid()
        self.metadata = decoding.metadata
        self.batches = list(chunks(order, decoding.batch_size))
        self.slots = slots_for(decoding.batches_ahead, decoding.num_workers)
        self.terminate_event = Event()
        self.finished = Event()  # set once every thread has left: the epoch's buffers are free
        self._state = Condition()  # guards what follows; threads and consumer wait on it
        self._claim_lock = Lock()  # batches are claimed, and their pages requested, in order
        self._claimed = 0  # batches claimed by threads so far
        self._released = 0  # batches below this one are released by the consumer
        self._delivered = 0  # batches the consumer has taken
        self._ready: dict[int, Any] = {}  # batch -> (slot, result) or _Failure, until the consumer takes it
        self._failed = False
        self._working = decoding.num_workers  # DecodeThreads.submit queues the epoch once per thread
        self._done = False
        self._taken = 0  # batches handed to the consumer so far
        self._events: list[Any] = [None] * self.slots  # per slot: event after which it may be rewritten
        self._pages = decoding.memory_manager.schedule_epoch(
            in_flight_batches(decoding.memory_manager, self.batches, self.slots))
        self._pages.__enter__()
        try:
            self.storage_state = self._pages.state
            self.memory_context = _PagesRequested()
            cuda = torch.cuda.is_available()
            self.cuda_streams = [torch.cuda.Stream() if cuda else None for _ in range(self.slots)]
            self.memory_allocations = decoding.allocate(decoding.batch_size, self.slots)
        except BaseException:
            self._pages.__exit__(None, None, None)
            raise

    @property
    def forked(self) -> bool:
        """True in a process forked after this epoch started: its decoding threads run in the parent only."""
        return self.pid != os.getpid()

    # ----------------------------------------------------------- producer side
    def work(self) -> None:
        """Claim and decode batches until none is left (or the epoch is closed or failed); run by each thread."""
        try:
            while (batch := self._claim()) is not None:
                try:
                    slot = batch % self.slots
                    self._wait_released(slot)
                    item: Any = (slot, self.run_pipeline(batch, self.batches[batch], slot, None))
                except BaseException as error:  # noqa: BLE001 - every failure must reach the consumer
                    item = _Failure(error, batch)
                self._publish(batch, item)
        finally:
            self._leave()

    def _stopping(self) -> bool:
        return self.terminate_event.is_set() or self._failed

    def _claim(self) -> int | None:
        """The next batch, once its slot is released, with its pages requested; ``None`` when there is none to do."""
        with self._claim_lock:
            batch = self._claimed
            with self._state:
                while not self._stopping() and batch < len(self.batches) and not self._may_claim(batch):
                    self._state.wait(self.POLL_S)
                if self._stopping() or batch >= len(self.batches):
                    return None
                self._claimed += 1
            try:
                self._pages.start_batch(batch)  # in batch order (FFCV's process cache requires it)
            except BaseException as error:  # noqa: BLE001
                self._publish(batch, _Failure(error, batch))
                return None
            return batch

    def _may_claim(self, batch: int) -> bool:
        """True once ``batch`` is within ``slots - HELD_BATCHES`` of the consumer and its slot is released."""
        return batch < self._delivered + self.slots - HELD_BATCHES and batch - self.slots < self._released

    def _wait_released(self, slot: int) -> None:
        """Block until the GPU work that may still read ``slot``'s previous batch has completed.

        The consumer recorded the event when it released that batch (:meth:`_claim` waited for it).
        """
        event, self._events[slot] = self._events[slot], None
        if event is not None:
            event.synchronize()

    def _publish(self, batch: int, item: Any) -> None:
        with self._state:
            self._ready[batch] = item
            self._failed = self._failed or isinstance(item, _Failure)
            self._state.notify_all()

    def _leave(self) -> None:
        """One thread is done with the epoch; the last one releases the page cache and marks it finished."""
        with self._state:
            self._working -= 1
            last = self._working == 0
        if last:
            try:
                self._pages.__exit__(None, None, None)
            finally:
                with self._state:
                    self.finished.set()
                    self._state.notify_all()

    # ----------------------------------------------------------- consumer side
    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        if self.forked:  # before any lock: a parent's thread may have held one at the fork
            self._done = True
            raise ForkedLoaderError(
                f"this iterator of epoch {self.epoch} was started in process {self.pid}, and this process "
                f"({os.getpid()}) was forked from it: its decoding threads did not come along; start the epoch "
                f"again in this process with iter(loader) (after set_epoch({self.epoch}) to rerun it)")
        if self._taken >= HELD_BATCHES:  # the consumer is done with batch _taken - HELD_BATCHES
            self._release(self._taken - HELD_BATCHES)
        if self._taken >= len(self.batches):
            self._done = True
            raise StopIteration
        item = self._take(self._taken)
        if isinstance(item, _Failure):
            self._done = True
            raise LoaderThreadError(
                f"a decoding thread of epoch {self.epoch} failed at batch {item.batch} "
                f"({type(item.error).__name__}: {item.error}); see the chained traceback above"
            ) from item.error
        slot, result = item
        self._taken += 1
        if self.cuda_streams[slot] is not None and _cuda_active():
            torch.cuda.current_stream().wait_stream(self.cuda_streams[slot])  # its device copies, if any
        return result

    def _release(self, batch: int) -> None:
        """Let a thread decode into ``batch``'s slot once the GPU work queued so far has completed."""
        self._events[batch % self.slots] = release_event()
        with self._state:
            self._released = batch + 1
            self._state.notify_all()

    def _take(self, batch: int) -> Any:
        """Batch ``batch``'s item once decoded; an error instead of a hang if the threads stopped without it."""
        with self._state:
            while batch not in self._ready:
                if self.finished.is_set():
                    self._done = True
                    raise RuntimeError(f"epoch {self.epoch} was closed; start a new one with iter(loader)")
                self._state.wait(self.POLL_S)
            self._delivered = batch + 1
            self._state.notify_all()
            return self._ready.pop(batch)

    def close(self) -> None:
        """Ask the decoding threads to stop after their current batch (the last one releases the page cache)."""
        self.terminate_event.set()
        with self._state:
            self._state.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every thread has left the epoch (or ``timeout`` s); True if they have."""
        return self.finished.wait(timeout)
