"""Starting a fresh interpreter for one measurement, and reading its result line.

A fresh interpreter per measurement keeps peak RSS, numba compilation and FFCV's process-wide
thread settings from leaking between measurements. It runs :mod:`jit_ffcv.bench.child` on a
JSON config and prints its result as one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

RESULT = "RESULT "


def command(cfg: dict[str, Any]) -> list[str]:
    """The command line of a child measuring ``cfg``."""
    return [sys.executable, "-m", "jit_ffcv.bench.child", json.dumps(cfg)]


def child_env() -> dict[str, str]:
    """The environment of a child: this one, without Python warnings on its output."""
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def parse(cfg: dict[str, Any], returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The result line of a finished child, or a RuntimeError with the end of its stderr."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    if returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {cfg['kind']} failed (exit {returncode}):\n{stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def spawn(cfg: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Measure ``cfg`` in a fresh interpreter and return its result."""
    proc = subprocess.run(command(cfg), capture_output=True, text=True, env=child_env(), timeout=timeout)
    return parse(cfg, proc.returncode, proc.stdout, proc.stderr)
