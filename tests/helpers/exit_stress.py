"""Stress process exit with live decoding threads: many short processes, each exits holding a loader.

``python -m tests.helpers.exit_stress --runs 200`` writes the engine stress's paged beton and runs
``--runs`` processes of tests/helpers/loader_child.py (scenarios ``stale`` and ``abandon``, 3 decoding
threads), ``--parallel`` at a time so the box is loaded. Each process exits with its loader's threads
still started; every one must exit 0 with its JSON line. Before the threads were stopped and joined at
exit, 22 of 100 such exits aborted ("terminate called without an active exception", status -6).
Prints one line per failure and a summary; exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.engine_stress import write_beton

ROOT = Path(__file__).resolve().parents[2]
CHILD = ROOT / "tests" / "helpers" / "loader_child.py"
SCENARIOS = ("stale", "abandon")


def _start(scenario: str, beton: Path, threads: int) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.Popen([sys.executable, str(CHILD), scenario, str(beton), str(threads)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _problem(proc: subprocess.Popen) -> str | None:
    """What went wrong with a finished run (None: it exited 0 with its JSON line)."""
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0 and out.strip().endswith("}"):
        return None
    return f"status {proc.returncode}, stderr's end: {err[-300:]!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=4, help="processes at a time (load the box)")
    parser.add_argument("--threads", type=int, default=3, help="decoding threads per loader")
    args = parser.parse_args(argv)
    failures = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        beton = write_beton(Path(folder))
        running: list[tuple[int, subprocess.Popen]] = []
        for number in range(args.runs + args.parallel):
            if number < args.runs:
                running.append((number, _start(SCENARIOS[number % len(SCENARIOS)], beton, args.threads)))
            if len(running) == args.parallel or number >= args.runs:
                if not running:
                    break
                which, proc = running.pop(0)
                problem = _problem(proc)
                if problem:
                    failures += 1
                    print(f"run {which} ({SCENARIOS[which % len(SCENARIOS)]}): {problem}", flush=True)
    print(f"exit stress: {failures} of {args.runs} runs failed ({time.perf_counter() - started:.0f} s, "
          f"{args.parallel} at a time, {args.threads} threads each)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
