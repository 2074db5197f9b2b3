"""A write interrupted (SIGINT) while its progress bar draws its last line; prints the status and stderr.

``python -m tests.helpers.bar_interrupt WORKDIR``: the forked writer's tqdm ``display`` pauses 0.5 s
inside ``close()`` and the parent sends SIGINT then, the moment a random signal hits once in
hundreds of runs. Used by tests/test_signals.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def main(work: Path) -> None:
    """Fork a writer, SIGINT it inside the bar's ``close()``, print ``{"status": ..., "stderr": ...}``."""
    import tqdm

    from jit_ffcv.cli import main as cli
    from jit_ffcv.synthetic import make_image_folder

    data = make_image_folder(work / "data", num_classes=4, per_class=5, broken=False, val=False).root
    read, report = os.pipe()
    err = work / "err"
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            display = tqdm.tqdm.display

            def pausing(bar: tqdm.tqdm, *args: object, **kwargs: object) -> object:
                shown = display(bar, *args, **kwargs)
                if bar.disable:  # close() sets it before drawing the last line
                    os.write(report, b"C")
                    time.sleep(0.5)
                return shown

            tqdm.tqdm.display = pausing
            code = cli(["write", "--data-path", str(data), "--out", str(work / "out" / "t.beton"),
                        "--img-size", "32", "--num-workers", "1"])
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.read(read, 1)
    os.kill(pid, signal.SIGINT)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps({"status": status, "stderr": err.read_text(errors="replace"),
                      "published": (work / "out" / "t.beton").exists()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
