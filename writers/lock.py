"""One writer per beton across processes and hosts: an exclusive lock file beside the output.

Lightning runs ``prepare_data`` on local rank 0 of every node, so nodes sharing a file
system would all write the same beton. The first creates ``.NAME.lock`` exclusively
(``O_EXCL``, atomic on local disks and NFSv3+; no ``flock``, which NFS and Lustre may not
honour) with its host, pid and a random token, and touches it every ``heartbeat`` seconds.
The others wait, logging every ``progress_every`` seconds, then use the published beton.
A holder that died (its pid is gone on this host, or its lock has not been touched for
``stale_after`` seconds when it runs elsewhere) is replaced: a waiter takes the lock over
and writes the beton itself. The writer's output is deterministic, so even two writers
racing after a takeover publish the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from writers.lifecycle import critical
from writers.output import pid_alive, remove_quietly

log = logging.getLogger("jit_ffcv.writer")


class LockError(RuntimeError):
    """The lock file of a beton cannot be created or read."""


def lock_path(out: Path) -> Path:
    """``DIR/NAME.beton`` -> ``DIR/.NAME.beton.lock``."""
    return out.with_name(f".{out.name}.lock")


class WriteLock:
    """Exclusive right to write one beton; ``with WriteLock(out) as lock:`` waits for it.

    ``lock.waited`` says whether another writer held it first (its beton may now exist).
    """

    def __init__(
        self, out: Path, *, heartbeat: float = 10.0, stale_after: float = 120.0, poll: float = 0.5,
        progress_every: float = 30.0,
    ) -> None:
        self.path = lock_path(out)
        self.out = out
        self.heartbeat, self.stale_after, self.poll, self.progress_every = heartbeat, stale_after, poll, progress_every
        self.host, self.pid, self.token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
        self.waited = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def __enter__(self) -> WriteLock:
        try:
            self.acquire()
        except BaseException:  # a signal right after the lock was created: it must not stay behind
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock file, waiting while a live writer holds it."""
        start = last_log = time.monotonic()
        seen: tuple[str, float] | None = None  # (content, mtime) of the holder's lock as last seen
        seen_changed = start
        while not self._create():
            state = self._read()
            now = time.monotonic()
            if state is None:  # released between our attempt and this read: try again at once
                continue
            text, mtime = state
            if state != seen:
                seen, seen_changed = state, now
            holder = _parse(text)
            if self._dead(holder, now - seen_changed):
                log.warning("%s of %s is gone without finishing; taking over", _who(holder, text), self.out)
                with critical():
                    self._break(text)
                continue
            if not self.waited or now - last_log >= self.progress_every:
                log.warning("waiting for %s to finish %s (%.0f s so far; taken over after %.0f s without a heartbeat; "
                            "if no writer is running, delete %s)", _who(holder, text), self.out, now - start,
                            self.stale_after, self.path)
                last_log = now
            self.waited = True
            time.sleep(self.poll)
        with critical():
            self._beat = threading.Thread(target=self._touch, name="jit-ffcv-lock-heartbeat", daemon=True)
            self._beat.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if still ours (a failure is logged: it never masks another)."""
        with critical():  # also on success: a signal must not stop it half-way and leave the lock behind
            self._stop.set()
            if self._beat is not None:
                self._beat.join()
            state = self._read()
            if state is not None and _parse(state[0]).get("token") == self.token:
                remove_quietly(self.path, "lock file")

    # ------------------------------------------------------------------ helpers
    def _create(self) -> bool:
        """:meth:`_try_create` as one step: a signal cannot leave an empty lock file."""
        with critical():
            return self._try_create()

    def _try_create(self) -> bool:
        """Create the lock file exclusively; False if it exists."""
        record = {"host": self.host, "pid": self.pid, "token": self.token, "started": time.time()}
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise LockError(f"cannot create the lock file {self.path}: {exc.strerror}; choose another output") from exc
        try:
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        return True

    def _read(self) -> tuple[str, float] | None:
        """(content, mtime) of the lock file, or None if there is none; an unreadable one reads as ``<...>``."""
        try:
            with open(self.path) as f:
                return f.read(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            try:
                return f"<unreadable: {why}>", self.path.stat().st_mtime
            except FileNotFoundError:
                return None

    def _dead(self, holder: dict, unchanged_for: float) -> bool:
        """Whether the holder is gone: no heartbeat for ``stale_after`` s (any host), or a dead pid on this host.

        A pid is only a hint: after a restart (a container keeping its hostname) it may name another
        live process, even this one, so the heartbeat decides whenever the pid looks alive.
        """
        if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
            if holder["pid"] == self.pid or not pid_alive(holder["pid"]):  # this process holds no lock it waits for
                return True
        return unchanged_for > self.stale_after

    def _break(self, stale_text: str) -> None:
        """Remove a dead holder's lock; if another waiter replaced it meanwhile, put that one back."""
        grave = self.path.with_name(f"{self.path.name}.{self.host}-{self.pid}.stale")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another waiter broke it first
        try:
            if grave.read_text() != stale_text:  # a live lock: restore it unless yet another exists
                try:
                    os.link(grave, self.path)
                except FileExistsError:
                    pass
        finally:
            grave.unlink(missing_ok=True)

    def _touch(self) -> None:
        """Heartbeat: refresh the lock's mtime so waiters on other hosts know we are alive."""
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a missing lock is noticed at release; the write itself goes on


def _parse(text: str) -> dict:
    """The holder's record, or {} while the file is being written."""
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _who(holder: dict, text: str = "") -> str:
    """The holder as the messages name it: ``writer HOST-PID``, or what is wrong with its lock file."""
    if "host" in holder or "pid" in holder:
        return f"writer {holder.get('host', '?')}-{holder.get('pid', '?')}"
    if text.startswith("<unreadable"):
        return f"the writer of an unreadable lock file ({text[12:-1]})"
    if not text.strip():
        return "the writer of an empty lock file (being created, or its writer died creating it)"
    return f"the writer of a lock file that is not a writer record ({text[:40]!r})"
