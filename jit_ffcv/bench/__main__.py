"""``python -m jit_ffcv.bench``: the same as ``jit-ffcv bench`` (and the entry of its child processes)."""

import sys

from jit_ffcv.bench.cli import _entry

sys.exit(_entry())
