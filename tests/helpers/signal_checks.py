"""What a signalled write must leave behind (tests/helpers/signal_stress.py): one function per check, no state."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.helpers.procs import alive, is_tracker, named_workers  # noqa: F401 - re-exported for the harness
from tests.helpers.procs import writer_children as children  # noqa: F401

#: Seconds a signalled writer has to exit.
EXIT_LIMIT = 5.0


def stderr_lines(err: Path) -> list[str]:
    """stderr's lines without progress bars."""
    text = err.read_text(errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("write train")]


def check(kind: str, status: int | None, lines: list[str], out: Path, workers: list[int],
          images: int) -> list[str]:
    """What is wrong with a finished run (empty: clean)."""
    from writers.metadata import read_metadata, verify_file

    problems = []
    if status is None:
        return [f"no exit within {EXIT_LIMIT} s"]
    text = "\n".join(lines)
    if "Traceback" in text or "Exception ignored" in text:
        problems.append("traceback in stderr: " + " | ".join(lines[-3:]))
    files = sorted(os.listdir(out.parent)) if out.parent.exists() else []
    published = out.name in files
    leftover = [f for f in files if f not in (out.name, out.name + ".json")]
    if leftover:
        problems.append(f"left behind: {leftover}")
    if published:
        try:
            meta = read_metadata(out)
            verify_file(out, meta, checksum=True)
            if meta.num_samples != images:
                problems.append(f"published {meta.num_samples} of {images} samples")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"published beton does not verify: {exc}")
    deadline = time.monotonic() + 1.0  # PDEATHSIG is asynchronous: give the kernel a moment
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.005)
    stray = [p for p in workers if alive(p)]
    if stray:
        problems.append(f"workers alive after exit: {stray}")
    expected = {"term": (-signal.SIGTERM, []), "int": (130, ["jit-ffcv: interrupted"])}
    if status == 0:
        if not published:
            problems.append("status 0 without a beton")
        if any(line.startswith("jit-ffcv:") for line in lines):
            problems.append(f"status 0 with message: {lines}")
    elif kind == "kill-worker":
        if status != 1 or len(lines) != 1 or not lines[0].startswith("jit-ffcv: error: writer worker process") \
                or "SIGKILL" not in lines[0]:
            problems.append(f"status {status}, stderr {lines}")
    elif kind.startswith("int") and (status, lines) == (-signal.SIGINT, []):
        pass  # died of SIGINT itself: the guard hands a SIGINT whose handler was the default back to it
    else:
        want_status, want_lines = expected[kind.split("-")[0]]
        if status != want_status or lines != want_lines:
            problems.append(f"status {status} (want {want_status}), stderr {lines}")
    return problems
