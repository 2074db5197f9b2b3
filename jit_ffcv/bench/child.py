"""``python -m jit_ffcv.bench.child CFG``: one measurement in this fresh interpreter (see :mod:`.spawn`).

``CFG`` is JSON; its ``kind`` picks the measurement; the result is printed as one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from jit_ffcv.bench.spawn import RESULT


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


if __name__ == "__main__":
    print(RESULT + json.dumps(run(json.loads(sys.argv[1]))), flush=True)
