"""A loader's decoding threads: they live as long as the loader and work on each of its epochs in turn.

A fresh thread per epoch (FFCV's way) made numba's TBB workers join a new thread's parallel loops
late (measured: 2x slower first batches); a dropped loader must leave no thread behind.
"""

from __future__ import annotations

import os
import weakref
from queue import Queue
from threading import Event, Thread, current_thread
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

    It holds no reference to the loader, and its threads exit once the loader is garbage-collected, or at
    interpreter exit (both close the running epoch and wait for the threads: a daemon thread still exiting
    while the interpreter finalizes aborts the process, "terminate called without an active exception",
    seen in 22 of 100 exits of a loaded 2-core box with 3 threads).
    """

    #: seconds to wait for each thread when the loader is collected or the interpreter exits
    JOIN_TIMEOUT_S = 10.0

    def __init__(self, owner: object, count: int) -> None:
        self.pid = os.getpid()  # a forked child inherits this object but not the threads
        self._jobs: Queue[Epoch | None] = Queue()
        self.threads = [DecodeThread(self._jobs, number) for number in range(count)]
        self._running: list[weakref.ref[Epoch]] = []  # the last submitted epoch, weakly (it refers to the loader)
        weakref.finalize(owner, _stop, self._jobs, self.threads, self._running, self.JOIN_TIMEOUT_S)
        for thread in self.threads:
            thread.start()

    def submit(self, epoch: Epoch) -> None:
        """Have every thread work on ``epoch`` once the epochs submitted before it are done."""
        self._running[:] = [weakref.ref(epoch)]
        for _ in self.threads:
            self._jobs.put(epoch)

    def stop(self) -> None:
        """Let the threads exit once the submitted epochs have run (without waiting: one may be stuck)."""
        _stop(self._jobs, self.threads, [], 0.0)

    def is_alive(self) -> bool:
        """True while every thread runs."""
        return all(thread.is_alive() for thread in self.threads)

    def busy(self) -> bool:
        """True while any thread works on an epoch."""
        return any(thread.busy.is_set() for thread in self.threads)


def _stop(jobs: Queue[Epoch | None], threads: list[DecodeThread], running: list[weakref.ref[Epoch]],
          timeout: float) -> None:
    """Close the running epoch (if any), tell every thread to exit, and wait up to ``timeout`` s for each."""
    epoch = running[0]() if running else None
    if epoch is not None:
        epoch.close()
    del epoch
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        if thread is not current_thread() and thread.is_alive():
            thread.join(timeout)
