"""FFCV must not change torch's thread count behind the user's back (it does, unpatched)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # fresh interpreters: `make test` runs it, `make check` does not

SCRIPT = """
import sys, torch
torch.set_num_threads(2)
if sys.argv[1] == "writer-first":  # the writer or `jit-ffcv info` may be what imports FFCV first
    from writers.beton import read_payloads
    read_payloads(sys.argv[2], limit=1)
from jit_ffcv.datamodule import JiTDataModule
after_import = torch.get_num_threads()
dm = JiTDataModule(sys.argv[2] + ".d", img_size=64, batch_size=4, num_workers=1, mode="raw", train_beton=sys.argv[2],
                   val_beton=sys.argv[2] + ".none")
dm.setup("fit")
loader = dm.train_dataloader()
seen = [len(y) for _, y in loader]
print(after_import, torch.get_num_threads(), sum(seen), loader.num_workers)
"""


@pytest.mark.parametrize("first", ["datamodule-first", "writer-first"])
def test_torch_threads_survive_import_and_epochs(raw_beton: Path, first: str) -> None:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", SCRIPT, first, str(raw_beton)], capture_output=True,
                         text=True, cwd=root, timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    # unpatched FFCV gives "1 1 20 1": 1 thread after import, num_workers=1 after the loader ran
    assert out.stdout.split() == ["2", "2", "20", "1"]
