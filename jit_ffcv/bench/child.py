"""Fresh processes: every measurement that needs its own interpreter runs as ``python -m jit_ffcv.bench.child CFG``.

A fresh interpreter per measurement keeps peak RSS, numba compilation and FFCV's process-wide
thread settings from leaking between measurements. ``CFG`` is JSON; its ``kind`` picks the
measurement; the result is printed as one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

RESULT = "RESULT "


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """The measurement ``cfg['kind']`` names, in this process."""
    kind = cfg["kind"]
    if kind in ("reference", "ffcv", "jit"):
        from jit_ffcv.bench.pipelines import run_child

        return run_child(cfg)
    if kind == "node":
        from jit_ffcv.bench.node import run_rank

        return run_rank(cfg, sys.stdin, sys.stdout)
    from jit_ffcv.bench.scale_beton import CHILDREN

    return CHILDREN[kind](cfg)


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
    """Run :func:`run` on ``cfg`` in a fresh interpreter and return its result."""
    proc = subprocess.run(command(cfg), capture_output=True, text=True, env=child_env(), timeout=timeout)
    return parse(cfg, proc.returncode, proc.stdout, proc.stderr)


if __name__ == "__main__":
    print(RESULT + json.dumps(run(json.loads(sys.argv[1]))), flush=True)
