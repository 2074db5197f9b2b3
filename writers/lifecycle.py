"""Process lifecycle of a write: a signal becomes one exception at a safe moment, workers die with the writer.

Within :func:`signals_guarded` (the whole of a write), the first SIGINT or SIGTERM raises
``KeyboardInterrupt`` or :class:`Terminated` in the main thread, so the ``finally``/``except``
blocks of the write remove the partial file, stop the workers and release the lock; later
signals are only recorded, so nothing interrupts that cleanup. Steps a signal must not cut in
two (forking the workers, creating the lock, publishing) run in :func:`critical`: a signal
arriving there is held and raised when the step is done. :func:`check_signals` raises for a
signal that was received but whose exception was swallowed (llvmlite's object-cache callback
prints and drops exceptions raised in it: the guard re-raises those at once) or that the
kernel still holds (pending while blocked, or not yet taken by the thread it chose: it is
dequeued there), so an interrupted write can never publish. When the guard exits, the signal is handed to the
handler that was there before: a default SIGTERM kills the process with SIGTERM's status.

Workers ignore SIGINT and SIGTERM (a Ctrl-C or a ``scancel`` reaches the whole process
group; the writer stops its workers itself) and ask the kernel for SIGKILL when their parent
dies (``PR_SET_PDEATHSIG``, Linux), so a writer killed by SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_PR_SET_PDEATHSIG, _PR_SET_NAME = 1, 15  # from <linux/prctl.h>
#: The name a writer worker gives itself (``ps``, ``top``, ``/proc/PID/comm``): at most 15 bytes.
WORKER_NAME = "jit-ffcv-write"
#: The signals a write turns into an exception and its workers ignore.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived while a beton was being written (a BaseException, like KeyboardInterrupt)."""


def worker_init(parent_pid: int) -> None:
    """First step of every writer worker: ignore SIGINT/SIGTERM, die with the parent, take :data:`WORKER_NAME`.

    The parent owns the cleanup and stops its workers. If the parent died before ``prctl``
    ran, exit now. The name tells the workers from the writer in ``ps``/``top``.
    """
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(WORKER_NAME.encode()), 0, 0, 0)  # cosmetic: failure is harmless
    if os.getppid() != parent_pid:
        os._exit(1)


def _exception(signum: int) -> BaseException:
    """What a signal raises in the writer."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated("SIGTERM: writer stopped, partial output removed")


class _Guard:
    """The signal state of one guarded write (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first signal
        self.raised = False  # its exception was raised
        self.swallowed = False  # ... and then dropped by a callback (reported through sys.unraisablehook)
        self.in_hook = False
        self.depth = 0  # nesting of critical()
        self.active = True
        self.lock = threading.Lock()
        self.again: threading.Thread | None = None
        self.handled: tuple[int, ...] = ()  # the signals it turns into exceptions (an ignored one stays ignored)

    def handler(self, signum: int, frame: object) -> None:
        """Record the signal; raise its exception unless in a critical step or already raised."""
        if self.received is None:
            self.received = signum
        if self.depth == 0 and not self.in_hook and (not self.raised or self.swallowed):
            self.raised, self.swallowed = True, False
            raise _exception(self.received)

    def unraisable_hook(self, previous: Callable[[Any], None]) -> Callable[[Any], None]:
        """A ``sys.unraisablehook`` that re-raises a swallowed signal exception in the main thread, silently."""

        def hook(unraisable: Any) -> None:
            if self.received is None or not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
                previous(unraisable)
                return
            self.in_hook = True
            try:
                self.swallowed = True
                if self.again is None:
                    self.again = threading.Thread(target=self._again, name="jit-ffcv-signal-again", daemon=True)
                    self.again.start()
            finally:
                self.in_hook = False

        return hook

    def _again(self) -> None:
        """While a swallowed exception is not raised again, signal the main thread (its handler raises it)."""
        while True:
            time.sleep(0.02)
            with self.lock:
                if not self.active:
                    return
                if self.swallowed and self.received is not None:
                    signal.pthread_kill(threading.main_thread().ident, self.received)  # type: ignore[arg-type]


_guard: _Guard | None = None


@contextmanager
def signals_guarded() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise once, cleanup runs undisturbed, then the signal is handed on.

    Only the main thread can set handlers (elsewhere this does nothing); an ignored signal stays
    ignored; nested guards are one guard. On exit after a signal: a default SIGTERM (or SIGINT)
    handler kills the process with that signal, a callable one is called, and the signal's
    exception propagates (it replaces an error raised meanwhile, such as a cleanup error).
    """
    global _guard
    if threading.current_thread() is not threading.main_thread() or _guard is not None:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous = {s: signal.SIG_DFL if h is None else h for s, h in previous.items()}  # None: set outside Python
    guard = _guard = _Guard()
    hook = sys.unraisablehook
    sys.unraisablehook = guard.unraisable_hook(hook)
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, guard.handler)
            guard.handled += (signum,)
    try:
        yield
        _take_pending(guard)  # one the kernel still holds is handed on below, as one arriving from here on
        guard.depth += 1  # the block is done: a signal from here on is handed on below, not raised twice
    finally:
        with guard.lock:
            guard.active = False
        _guard = None
        sys.unraisablehook = hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if guard.received is not None:
            _hand_on(guard.received, previous[guard.received])


def _hand_on(signum: int, previous: Any) -> None:
    """After cleanup: treat the signal as the handler before the guard would have, then raise its exception."""
    if previous == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # die of it, as without the guard
    elif callable(previous) and previous is not signal.default_int_handler:
        previous(signum, None)
    current = sys.exc_info()[1]
    if not isinstance(current, (KeyboardInterrupt, Terminated)):
        raise _exception(signum) from current


def _take_pending(guard: _Guard) -> None:
    """Record a guarded signal the kernel holds for this process or thread that no handler has run for yet.

    Which thread takes a process-directed signal (``kill``, ``scancel``) is the kernel's choice, and a
    thread blocking it (``_fork_worker`` does while forking) leaves it pending: the Python handler would
    run later, perhaps after publishing. ``sigtimedwait`` with no wait dequeues it here, in the main thread.
    """
    if guard.handled and hasattr(signal, "sigtimedwait") and threading.current_thread() is threading.main_thread():
        info = signal.sigtimedwait(guard.handled, 0)
        if info is not None and guard.received is None:
            guard.received = info.si_signo


def check_signals() -> None:
    """Raise the exception of a signal received during this write (a safe point: e.g. before publishing)."""
    guard = _guard
    if guard is not None and guard.depth == 0:
        _take_pending(guard)
        if guard.received is not None:
            guard.raised = True
            raise _exception(guard.received)


@contextmanager
def critical() -> Iterator[None]:
    """A step a signal must not cut in two: a signal arriving within is raised right after it (if it succeeds)."""
    guard = _guard
    if guard is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    guard.depth += 1
    try:
        yield
    finally:
        guard.depth -= 1
    check_signals()
