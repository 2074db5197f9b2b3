"""Two torchrun launchers (``--nnodes=2 --nproc_per_node=2``) on loopback: 4 gloo ranks over one beton dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.order import epoch_order
from jit_ffcv.synthetic import make_image_folder
from tests.helpers.data import read_beton
from tests.helpers.ddp import ddp_env, min_pages
from tests.helpers.multinode_worker import BATCH, SEED

N, NODES, PER_NODE = 45, 2, 2
WORLD = NODES * PER_NODE

pytestmark = pytest.mark.slow


def test_two_nodes_of_two_ranks_cover_the_epoch(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_image_folder(root, num_classes=5, per_class=9, broken=False, val=False)
    beton_dir = tmp_path / "shared_betons"  # what both "nodes" see, e.g. a network file system
    JiTDataModule(data_path=str(root), img_size=64, batch_size=BATCH, mode="raw", write_workers=0,
                  beton_dir=str(beton_dir)).prepare_data()
    out = tmp_path / "out"
    out.mkdir()
    env = ddp_env()
    script = Path(__file__).parent / "helpers" / "multinode_worker.py"
    launchers = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}",
                          f"--nproc_per_node={PER_NODE}", f"--node_rank={node}", "--master_addr=127.0.0.1",
                          f"--master_port={env['MASTER_PORT']}", str(script), str(root), str(beton_dir), str(out)],
                         env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in range(NODES)
    ]
    try:
        logs = [p.communicate(timeout=300)[0] for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(log[-4000:] for log in logs)

    beton = beton_dir / "train_64_raw.beton"
    labels = read_beton(beton)[1]
    runs = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    per_rank = -(-N // WORLD)  # 12: 45 samples padded to 48
    steps = per_rank // BATCH
    for rank, run in enumerate(runs):
        assert (run["world"], run["rank"], run["shard"]) == (WORLD, rank, [WORLD, rank])
        assert (run["node"], run["local_rank"]) == divmod(rank, PER_NODE)
        predicted = epoch_order(min_pages(beton), np.arange(N), kind="quasi_random", num_replicas=WORLD, rank=rank,
                                seed=SEED, epoch=0, buffer_pages=2 * BATCH).tolist()
        assert run["order"] == predicted and run["indices"] == predicted[:steps * BATCH]
        assert run["labels"] == labels[run["indices"]].tolist()
    union = sum((run["order"] for run in runs), [])
    assert len(union) == WORLD * per_rank and sorted(set(union)) == list(range(N))  # 3 padding repeats only
