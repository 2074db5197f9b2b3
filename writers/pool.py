"""The writer's worker processes: results of chunks of work, in order, from forked workers with one pipe each.

No thread and no shared queue: each worker has its own pipe, so a worker that dies (the OOM
killer's SIGKILL) closes it and the main thread reads end-of-file at once, where a shared
result pipe would leave a reader blocked on a half-sent message. The main thread waits on the
pipes with ``select``, which a signal interrupts, and it alone starts, stops and kills the
workers (see :mod:`writers.lifecycle`). At most ``4 * workers`` chunks are in flight, so
memory stays bounded however large the split.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

from writers.encode import Encoded, encode_chunk
from writers.lifecycle import SIGNALS, check_signals, critical, worker_init
from writers.options import CHUNK

#: Chunks a worker holds at once (one being worked on, one waiting), and the reorder window per worker.
PER_WORKER, WINDOW_PER_WORKER = 2, 4


class WorkerLostError(RuntimeError):
    """A worker process died during a write (most often the out-of-memory killer's SIGKILL)."""


@dataclass
class _Worker:
    pid: int
    conn: Connection
    jobs: deque[int] = field(default_factory=deque)  # indices of the chunks sent and not yet answered
    reaped: bool = False


def _serve(conn: Connection, func: Callable[..., list[Any]]) -> None:
    """A worker's loop: answer each job with ``(True, func(*job))`` or ``(False, error)``; None ends it."""
    while (job := conn.recv()) is not None:
        try:
            answer: tuple[bool, Any] = (True, func(*job))
        except Exception as exc:  # noqa: BLE001 - reported by the parent, which stops the write
            answer = (False, f"{type(exc).__name__}: {exc}")
        conn.send(answer)


def _fork_worker(func: Callable[..., list[Any]], others: Sequence[_Worker]) -> _Worker:
    """Fork one worker; SIGINT/SIGTERM are blocked across the fork so the child ignores them before any arrives."""
    ours, theirs = Pipe()
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                ours.close()
                for other in others:
                    other.conn.close()
                worker_init(parent)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                _serve(theirs, func)
                code = 0
            except BaseException:  # noqa: BLE001 - EOF: the parent is gone; anything else: the parent reports it
                pass
            finally:
                os._exit(code)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    theirs.close()
    return _Worker(pid, ours)


def _lost(worker: _Worker) -> WorkerLostError:
    """The error of a worker whose pipe closed: how it died, the likely cause, what happens to the write."""
    status = None
    deadline = time.monotonic() + 2.0
    while status is None and time.monotonic() < deadline:  # its pipe closes as it exits: the status follows
        pid, raw = os.waitpid(worker.pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(raw) if pid else None
        if status is None:
            time.sleep(0.01)
    worker.reaped = status is not None
    if status == -signal.SIGKILL:
        how = "was killed by SIGKILL, most likely by the out-of-memory killer (lower --num-workers or --img-size)"
    elif status is not None and status < 0:
        how = f"was killed by {signal.Signals(-status).name}"
    else:
        how = f"exited unexpectedly (status {status})"
    return WorkerLostError(f"writer worker process {worker.pid} {how}; the write stopped and its partial beton "
                           f"and lock are removed")


def _stop(workers: list[_Worker]) -> None:
    """Ask idle workers to exit and reap them."""
    for worker in workers:
        try:
            worker.conn.send(None)
        except OSError:
            pass  # already gone: reaped below
    for worker in workers:
        os.waitpid(worker.pid, 0)
        worker.reaped = True


def _kill(workers: list[_Worker]) -> None:
    """Kill and reap every worker not reaped yet; close the pipes (cleanup: never raises for a gone worker)."""
    for worker in workers:
        if not worker.reaped:
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for worker in workers:
        if not worker.reaped:
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            worker.reaped = True
        worker.conn.close()


def ordered_results(func: Callable[..., list[Any]], jobs: Sequence[tuple], num_workers: int) -> Iterator[Any]:
    """Yield the items of ``func(*job)`` for every job, in job order, computed by ``num_workers`` processes.

    ``num_workers`` 0 runs the jobs here; more workers than jobs are not started. A worker that
    dies raises :class:`WorkerLostError`; an exception in ``func`` raises ``RuntimeError`` naming it.
    """
    if num_workers == 0 or not hasattr(os, "fork"):
        for job in jobs:
            check_signals()
            yield from func(*job)
        return
    workers: list[_Worker] = []
    try:
        with critical():  # a worker forked must be in ``workers`` before a signal may raise
            for _ in range(min(num_workers, len(jobs))):
                workers.append(_fork_worker(func, workers))
        yield from _run(workers, jobs)
        _stop(workers)
    finally:
        _kill(workers)


def _run(workers: list[_Worker], jobs: Sequence[tuple]) -> Iterator[Any]:
    """Hand out jobs, collect answers, yield them in order."""
    by_conn = {w.conn: w for w in workers}
    answers: dict[int, list[Any]] = {}
    sent = done = 0
    window = WINDOW_PER_WORKER * len(workers)
    while done < len(jobs):
        for worker in workers:
            while len(worker.jobs) < PER_WORKER and sent < min(len(jobs), done + window):
                try:
                    worker.conn.send(jobs[sent])
                except OSError:
                    raise _lost(worker) from None
                worker.jobs.append(sent)
                sent += 1
        if done in answers:
            yield from answers.pop(done)
            done += 1
            continue
        check_signals()
        for conn in wait([w.conn for w in workers if w.jobs]):
            worker = by_conn[conn]  # type: ignore[index]
            try:
                ok, value = conn.recv()  # type: ignore[union-attr]
            except (EOFError, OSError):
                raise _lost(worker) from None
            if not ok:
                raise RuntimeError(f"writer worker process {worker.pid} failed: {value}")
            answers[worker.jobs.popleft()] = value


def encoded_in_order(
    tasks: Sequence[tuple[int, str, int]], img_size: int, mode: str, quality: int, num_workers: int
) -> Iterator[Encoded]:
    """Yield encoded samples in task order, computed by ``num_workers`` processes in chunks of ``CHUNK``."""
    jobs = [(tasks[i : i + CHUNK], img_size, mode, quality) for i in range(0, len(tasks), CHUNK)]
    return ordered_results(encode_chunk, jobs, num_workers)
