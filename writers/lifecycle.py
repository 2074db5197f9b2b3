"""Process lifecycle of a write: workers die with the writer, SIGTERM cleans up like Ctrl-C.

A writer killed by SIGKILL cannot clean up, but its worker processes must not outlive it
(each holds a few hundred MiB, and ``prepare_data`` starts one per CPU): they ask the
kernel for SIGKILL when their parent dies (``PR_SET_PDEATHSIG``, Linux). SIGTERM (a
scheduler's ``scancel``, ``kill``) becomes an exception, so the same ``finally``/``except``
blocks that handle Ctrl-C remove the partial file and the lock, then the process dies of
SIGTERM as it would have.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Terminated(BaseException):
    """SIGTERM arrived while a beton was being written (a BaseException, like KeyboardInterrupt)."""


def worker_init(parent_pid: int) -> None:
    """Initializer of every writer worker: die with the parent; leave SIGINT/SIGTERM to it.

    The parent owns the cleanup: a worker ignores Ctrl-C (the parent stops the pool) and
    dies at once on SIGTERM. If the parent died before ``prctl`` ran, exit now.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; after cleanup it is re-delivered.

    Only the main thread can set handlers (elsewhere this does nothing), and an ignored
    SIGTERM stays ignored. A second SIGTERM during cleanup is ignored so cleanup finishes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # set outside Python: restoring it is impossible, the default is closest
        previous = signal.SIG_DFL
    if previous == signal.SIG_IGN:
        yield
        return

    def raise_terminated(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("SIGTERM: writer stopped, partial output removed")

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signal.SIGTERM, None)
        else:  # SIG_DFL: die of SIGTERM, as without this handler
            os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are held; they are delivered right after it.

    For a step a signal must not cut in two: a process pool's first ``submit`` forks its
    workers, then starts its manager thread, and interrupted between the two the pool can no
    longer shut down (``cannot join thread before it is started``, which would replace the
    Ctrl-C or SIGTERM). Only the main thread can hold signals (elsewhere this does nothing).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in signums}
    previous = {s: h for s, h in previous.items() if h not in (None, signal.SIG_IGN)}
    for signum in previous:
        signal.signal(signum, lambda received, frame: held.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:
            signal.raise_signal(signum)  # now handled as usual: KeyboardInterrupt, Terminated, or death
