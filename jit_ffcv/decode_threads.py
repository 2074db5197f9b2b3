"""A loader's decoding threads: they live as long as the loader and work on each of its epochs in turn.

A fresh thread per epoch (FFCV's way) made numba's TBB workers join a new thread's parallel loops
late (measured: 2x slower first batches); a dropped loader must leave no thread behind.
"""

from __future__ import annotations

import os
import weakref
from queue import Queue
from threading import Event, Thread
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jit_ffcv.epoch import Epoch

__all__ = ["DecodeThread", "DecodeThreads"]


class DecodeThread(Thread):
    """One of a loader's decoding threads: takes epochs from its pool's queue and decodes batches of each."""

    def __init__(self, jobs: Queue[Epoch | None], number: int) -> None:
        super().__init__(daemon=True, name=f"jit-ffcv decoder {number}")
        self._jobs = jobs
        self.busy = Event()  # set while it works on an epoch

    def run(self) -> None:
        """Work on queued epochs until a ``None`` arrives (the pool stopped or its loader was collected)."""
        while (epoch := self._jobs.get()) is not None:
            self.busy.set()
            try:
                epoch.work()
            finally:
                del epoch  # no reference to the loader while idle
                self.busy.clear()


class DecodeThreads:
    """A loader's decoding threads, for the loader's lifetime; every one of them works on each submitted epoch.

    It holds no reference to the loader, and its threads exit once the loader is garbage-collected
    (or :meth:`stop` is called), so loaders that are dropped leave no thread.
    """

    def __init__(self, owner: object, count: int) -> None:
        self.pid = os.getpid()  # a forked child inherits this object but not the threads
        self._jobs: Queue[Epoch | None] = Queue()
        self.threads = [DecodeThread(self._jobs, number) for number in range(count)]
        weakref.finalize(owner, _stop, self._jobs, count)
        for thread in self.threads:
            thread.start()

    def submit(self, epoch: Epoch) -> None:
        """Have every thread work on ``epoch`` once the epochs submitted before it are done."""
        for _ in self.threads:
            self._jobs.put(epoch)

    def stop(self) -> None:
        """Let the threads exit once the submitted epochs have run."""
        _stop(self._jobs, len(self.threads))

    def is_alive(self) -> bool:
        """True while every thread runs."""
        return all(thread.is_alive() for thread in self.threads)

    def busy(self) -> bool:
        """True while any thread works on an epoch."""
        return any(thread.busy.is_set() for thread in self.threads)


def _stop(jobs: Queue[Epoch | None], count: int) -> None:
    for _ in range(count):
        jobs.put(None)
