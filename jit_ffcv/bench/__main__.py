"""``python -m jit_ffcv.bench``: the same as ``jit-ffcv bench``."""

import sys

from jit_ffcv.bench.cli import main, parse_args

sys.exit(main(parse_args()))
