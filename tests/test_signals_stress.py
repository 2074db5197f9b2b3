"""CI-sized signal stress test of the writer (``make stress`` runs the full one: 200 deliveries and cold starts).

Twenty signals at random moments, over every case (SIGTERM/SIGINT to the process or its group, SIGKILL
to one worker) and phase (start-up, mid-write, publish); see tests/helpers/signal_stress.py for what
each run must satisfy. Unfixed, a killed worker gave a 27-line BrokenProcessPool traceback, a group
SIGTERM could hang in the pool's thread, and a signal during FFCV's setup left a shared-memory traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.procs import ROOT


@pytest.mark.slow
def test_twenty_signals_at_random_moments_all_exit_clean() -> None:
    seed = int(os.environ.get("JIT_FFCV_STRESS_SEED", "20"))
    out = subprocess.run([sys.executable, "-m", "tests.helpers.signal_stress", "--deliveries", "28", "--seed",
                          str(seed)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "all                              28     " in out.stdout
