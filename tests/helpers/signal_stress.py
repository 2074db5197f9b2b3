"""Signal stress test of ``jit-ffcv write``: signals at random moments, every run checked for a clean exit.

``python -m tests.helpers.signal_stress --deliveries 200`` (``make stress``). Each run writes a small
synthetic ImageFolder with 2 workers; one signal is delivered per run, round-robin over the cases
(SIGTERM to the process or its group, SIGINT to the process or its group, SIGKILL to one worker:
a child named ``jit-ffcv-write``, never multiprocessing's resource tracker, which looks like the
writer until its exec)
and the phases (start-up: from the command's start to its first encoded image; mid-write: to the
start of publishing; publish: while the sidecar and beton are renamed, slowed down to 0.1 s per
rename so a signal can land there). Runs are forks of this process, which imported everything
once (a cold start imports FFCV for ~10 s); ``--cold N`` adds N runs started from a fresh
interpreter, signalled at a random moment of their start-up (FFCV's import included).

A run is clean when: the process exits within 5 s of the signal; its status is the signal's
(-15 for SIGTERM; 130 and the one line ``jit-ffcv: interrupted``, or -2, for SIGINT; 1 and one
``jit-ffcv: error: writer worker process ... SIGKILL ...`` line when a worker is killed), or 0
when the write had finished; stderr holds no traceback and no other line (progress bars aside);
no lock or partial file is left; no worker outlives it; and a beton is there only if it is
complete (its SHA-256 and sample count verified). Exit status 0 when every run is clean.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tests.helpers.signal_checks import EXIT_LIMIT, check, children, named_workers, stderr_lines

KINDS = ("term-process", "term-group", "int-process", "int-group", "kill-worker")
PHASES = ("start-up", "mid-write", "publish")
CASES = [(k, p) for k in KINDS for p in PHASES if not (k == "kill-worker" and p == "publish")]
PUBLISH_PAUSE = 0.1  # seconds per rename in the publish phase
IMAGES = 120
ARGS = ["--img-size", "64", "--mode", "jpg", "--num-workers", "2"]


class _SlowOs:
    """``os`` for writers.publish in a child: each rename reports 'P' once, then takes PUBLISH_PAUSE s."""

    def __init__(self, report: int) -> None:
        self.report, self.sent = report, False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def replace(self, src: Any, dst: Any) -> None:
        if not self.sent:
            os.write(self.report, b"P")
            self.sent = True
        time.sleep(PUBLISH_PAUSE)
        os.replace(src, dst)


def _child(argv: list[str], report: int, err: Path, slow_publish: bool) -> None:
    """A forked writer: its own process group, stderr to ``err``; reports 'W' at the first image, 'P' at publish."""
    code = 99
    try:
        os.setpgid(0, 0)
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import writers.beton
        import writers.publish
        from jit_ffcv.cli import main

        encoded = writers.beton.encoded_in_order

        def reporting(*args: Any) -> Any:
            for i, enc in enumerate(encoded(*args)):
                if i == 0:
                    os.write(report, b"W")
                yield enc

        writers.beton.encoded_in_order = reporting
        if slow_publish:
            writers.publish.os = _SlowOs(report)
        code = main(argv)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])  # done: the harness's turn
    except BaseException:  # noqa: BLE001 - anything escaping main is a failure the harness reports
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait_byte(fd: int, want: bytes, seen: bytearray, timeout: float) -> bool:
    """Wait until ``want`` was reported on ``fd`` (or the writer closed it)."""
    deadline = time.monotonic() + timeout
    while want[0] not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        data = os.read(fd, 16)
        if not data:
            return False
        seen.extend(data)
    return True


def _wait_exit(pid: int, timeout: float) -> int | None:
    """The exit code of ``pid`` (negative: its signal), or None if it did not exit within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)


def _deliver(kind: str, pid: int, rng: random.Random) -> tuple[bool, list[int]]:
    """Send the case's signal; (delivered, worker pids seen)."""
    workers = children(pid)
    try:
        if kind == "kill-worker":
            named = named_workers(pid)  # a child not named yet may be the resource tracker before its exec
            if not named:
                return False, workers
            os.kill(rng.choice(named), signal.SIGKILL)
        elif kind.endswith("group"):
            os.killpg(pid, signal.SIGTERM if kind.startswith("term") else signal.SIGINT)
        else:
            os.kill(pid, signal.SIGTERM if kind.startswith("term") else signal.SIGINT)
    except ProcessLookupError:
        return False, workers
    return True, workers


def _run(kind: str, phase: str, data: Path, work: Path, n: int, timing: dict[str, float],
         rng: random.Random) -> tuple[str, list[str]]:
    """One forked write and one signal; ('clean' | 'late' | 'failed', problems)."""
    out = work / f"run{n}" / "t.beton"
    err = work / f"run{n}.err"
    argv = ["write", "--data-path", str(data), "--out", str(out), *ARGS]
    read, report = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(argv, report, err, slow_publish=phase == "publish")
    os.close(report)
    seen = bytearray()
    try:
        if kind == "kill-worker" and phase == "start-up":  # the first moment a worker has named itself
            deadline = time.monotonic() + 60
            while not named_workers(pid) and time.monotonic() < deadline and _wait_exit(pid, 0) is None:
                time.sleep(0.001)
        elif phase == "start-up":
            time.sleep(rng.uniform(0, timing["W"]))
        elif phase == "mid-write":
            _wait_byte(read, b"W", seen, 60)
            time.sleep(rng.uniform(0, timing["P"] - timing["W"]))
        else:
            _wait_byte(read, b"P", seen, 60)
            time.sleep(rng.uniform(0, 2 * PUBLISH_PAUSE))
        delivered, workers = _deliver(kind, pid, rng)
        status = _wait_exit(pid, EXIT_LIMIT if delivered else 60)
        if status is None:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        problems = check(kind, status, stderr_lines(err), out, workers, IMAGES)
        if problems:
            problems.append("stderr's end: " + repr(err.read_text(errors="replace")[-240:]))
        return ("late" if not delivered and not problems else "failed" if problems else "clean"), problems
    finally:
        os.close(read)


def _calibrate(data: Path, work: Path) -> dict[str, float]:
    """Times from start to the first image ('W'), to publishing ('P') and to exit, of unsignalled runs."""
    runs = []
    for n in range(2):
        out = work / f"calib{n}" / "t.beton"
        read, report = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _child(["write", "--data-path", str(data), "--out", str(out), *ARGS], report, work / "calib.err", False)
        os.close(report)
        seen, marks = bytearray(), {}
        for mark in (b"W", b"P"):
            _wait_byte(read, mark, seen, 120)
            marks[mark.decode()] = time.monotonic() - start
        os.close(read)
        status = _wait_exit(pid, 120)
        marks["exit"] = time.monotonic() - start
        problems = check("term-process", status, stderr_lines(work / "calib.err"), out, [], IMAGES)
        if status != 0 or problems:
            raise SystemExit(f"calibration write failed: status {status}, {problems}")
        runs.append(marks)
    return {k: min(r[k] for r in runs) for k in runs[0]}


def _default_signals() -> None:
    """In a cold run before exec: SIGINT and SIGTERM as a terminal would give them (a harness started in the
    background of a shell inherits an ignored SIGINT, which Python would keep ignoring)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def _cold(data: Path, work: Path, n: int, rng: random.Random, window: float) -> tuple[str, str, list[str]]:
    """A write from a fresh interpreter, signalled (group SIGTERM or SIGINT) at a random moment of its start-up."""
    kind = rng.choice(["term-group", "int-group"])
    out = work / f"cold{n}" / "t.beton"
    err = work / f"cold{n}.err"
    read, report = os.pipe()
    code = ("import os, sys; from jit_ffcv.cli import main; os.write(int(sys.argv[1]), b'S'); "
            "sys.exit(main(sys.argv[2:]))")
    with open(err, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", code, str(report), "write", "--data-path", str(data),
                                 "--out", str(out), *ARGS], stderr=f, stdout=subprocess.DEVNULL,
                                pass_fds=[report], start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                preexec_fn=_default_signals)
    os.close(report)
    _wait_byte(read, b"S", bytearray(), 60)
    os.close(read)
    time.sleep(rng.uniform(0, window))
    delivered, workers = _deliver(kind, proc.pid, rng)
    try:
        status = proc.wait(EXIT_LIMIT if delivered else 120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = None
    problems = check(kind, status, stderr_lines(err), out, workers, IMAGES)
    return kind, ("late" if not delivered and not problems else "failed" if problems else "clean"), problems


ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    """Run the stress test; print the per-case table; 0 when every run was clean."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=200, help="forked runs, one signal each")
    parser.add_argument("--cold", type=int, default=0, help="extra runs from a fresh interpreter (~15 s each)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random moments (default: random)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=KINDS, help="signal cases to run (default: all)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    import jit_ffcv.cli  # noqa: F401  (imported once: forked runs start warm)
    import writers.beton  # noqa: F401
    import writers.cli  # noqa: F401
    import writers.ffcv_api  # noqa: F401
    import writers.publish  # noqa: F401
    from jit_ffcv.synthetic import make_image_folder

    table: dict[tuple[str, str], Counter] = defaultdict(Counter)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="jit-ffcv-stress-") as tmp:
        work = Path(tmp)
        data = make_image_folder(work / "data", num_classes=4, per_class=IMAGES // 4, broken=False, val=False).root
        timing = _calibrate(data, work)
        print(f"seed {seed}; unsignalled write: first image at {timing['W']:.2f} s, publish at {timing['P']:.2f} s, "
              f"exit at {timing['exit']:.2f} s", flush=True)
        chosen = [case for case in CASES if case[0] in args.kinds]
        cases = [chosen[i % len(chosen)] for i in range(args.deliveries)]
        rng.shuffle(cases)
        for n, (kind, phase) in enumerate(cases):
            verdict, problems = _run(kind, phase, data, work, n, timing, rng)
            table[kind, phase][verdict] += 1
            if problems:
                failures.append(f"{kind} {phase} run{n}: {'; '.join(problems)}")
        for n in range(args.cold):
            kind, verdict, problems = _cold(data, work, n, rng, window=8.0)
            table[kind, "cold start-up"][verdict] += 1
            if problems:
                failures.append(f"{kind} cold start-up cold{n}: {'; '.join(problems)}")
    print(f"{'case':<14} {'phase':<14} {'runs':>5} {'clean':>6} {'late':>5} {'failed':>7}")
    for (kind, phase), counts in sorted(table.items()):
        runs = sum(counts.values())
        print(f"{kind:<14} {phase:<14} {runs:>5} {counts['clean']:>6} {counts['late']:>5} {counts['failed']:>7}")
    total = Counter()
    for counts in table.values():
        total.update(counts)
    print(f"{'all':<29} {sum(total.values()):>5} {total['clean']:>6} {total['late']:>5} {total['failed']:>7}")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
