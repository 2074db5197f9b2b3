"""Helpers for tests that start real writer processes: start, wait for a state, list children."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start(args: Sequence[str], log: Path, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """Start ``python -m jit_ffcv.cli ARGS`` from the repo root; stdout and stderr go to ``log``."""
    with open(log, "wb") as f:
        return subprocess.Popen([*prefix, sys.executable, "-m", "jit_ffcv.cli", *args], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=f, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 5 ms; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def children(pid: int) -> list[int]:
    """Pids of the living (non-zombie) processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def named_workers(pid: int) -> list[int]:
    """Children of ``pid`` that named themselves writer workers (never the resource tracker, even before its exec)."""
    from writers.lifecycle import WORKER_NAME

    def name(child: int) -> str:
        try:
            return Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            return ""

    return [child for child in children(pid) if name(child) == WORKER_NAME]


def writer_children(pid: int) -> list[int]:
    """Living children of ``pid`` except multiprocessing's resource tracker (FFCV's shared memory starts one)."""
    return [child for child in children(pid) if not is_tracker(child)]


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def is_tracker(pid: int) -> bool:
    """Whether ``pid`` is multiprocessing's resource tracker (started by SharedMemory)."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def shm_segments(pid: int) -> set[str]:
    """Names of the /dev/shm segments ``pid`` has mapped (unlinked ones included)."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if "/dev/shm/" in line:
            names.add(line.split("/dev/shm/", 1)[1].split()[0])
    return names


def kill_all(pids: Sequence[int]) -> None:
    """Best-effort SIGKILL of processes a test started (cleanup after a failed assertion)."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
