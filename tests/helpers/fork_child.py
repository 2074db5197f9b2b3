"""A JiTLoader used in a forked child, run by tests/test_loader_guards.py in its own process (a hang is bounded there).

``python -m tests.helpers.fork_child SCENARIO BETON`` prints one JSON line: what the forked child saw.
Scenarios: ``inherited_iterator`` (next() on the parent's running iterator, then a new epoch),
``after_finished_epoch`` (a new epoch after the parent finished one), ``new_epoch_mid`` (a new epoch while the
parent's is running).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

from jit_ffcv.loader import JiTLoader
from jit_ffcv.traversal import SequentialOrder
from writers.ffcv_api import IntDecoder, SimpleRGBImageDecoder

BATCH = 4
CHILD_TIMEOUT_S = 30.0


def make_loader(beton: str) -> JiTLoader:
    """Sequential, two decoding threads, batches of 4: labels come out in stored order."""
    return JiTLoader(beton, batch_size=BATCH, num_workers=2, order=SequentialOrder(), drop_last=False,
                     batches_ahead=2,
                     pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "index": None,
                                "checksum": None})


def labels(batches: Any) -> list[int]:
    return [int(v) for _, y in batches for v in y.reshape(-1)]


def in_child(loader: JiTLoader, inherited: Any) -> dict[str, Any]:
    """What the forked child does: use the inherited iterator (if any), then run a whole new epoch."""
    result: dict[str, Any] = {"inherited": None}
    started = time.perf_counter()
    if inherited is not None:
        try:
            next(inherited)
            result["inherited"] = "a batch"
        except Exception as error:  # noqa: BLE001 - reported to the test
            result["inherited"] = f"{type(error).__name__}: {error}"
    loader.set_epoch(0)
    result["epoch_labels"] = labels(loader)
    result["seconds"] = time.perf_counter() - started
    return result


def run(scenario: str, beton: str) -> dict[str, Any]:
    loader = make_loader(beton)
    inherited = None
    if scenario == "after_finished_epoch":
        labels(loader)
    else:
        running = iter(loader)
        next(running)
        next(running)
        inherited = running if scenario == "inherited_iterator" else None
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's clean-up
        code = 0
        try:
            with open(out, "w") as f:
                json.dump(in_child(loader, inherited), f)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"hung": True}
        time.sleep(0.05)
    with open(out) as f:
        text = f.read()
    os.unlink(out)
    parent_rest = labels(running) if inherited is not None else None  # the parent's epoch is unharmed
    return {"hung": False, "status": os.waitstatus_to_exitcode(done[1]), **(json.loads(text) if text else {}),
            "parent_rest": parent_rest}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2])))
