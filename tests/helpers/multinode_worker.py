"""One rank of tests/test_multinode.py, started by ``torchrun`` (not a test module itself).

``python tests/helpers/multinode_worker.py DATA BETON_DIR OUT``: joins the gloo group torchrun set up,
builds the train loader over the shared beton directory (world and rank from torch.distributed),
runs epoch 0 and writes ``OUT/rank{r}.json``: world, node, the delivered indices and labels.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from jit_ffcv.datamodule import JiTDataModule

BATCH, SEED = 3, 5


def main(data: str, beton_dir: str, out: str) -> None:
    dist.init_process_group("gloo")
    dm = JiTDataModule(data_path=data, img_size=64, batch_size=BATCH, num_workers=2, mode="raw", write_workers=0,
                       beton_dir=beton_dir, seed=SEED, flip_prob=0.5)
    loader = dm.train_dataloader()
    order = list(loader.sampler)
    labels = [y.reshape(-1).tolist() for _, y in loader]
    delivered = sum(len(b) for b in labels)
    result = {"world": dist.get_world_size(), "rank": dist.get_rank(), "node": int(os.environ["GROUP_RANK"]),
              "local_rank": int(os.environ["LOCAL_RANK"]), "order": order, "indices": order[:delivered],
              "labels": sum(labels, []), "shard": [loader.traversal_order.num_replicas, loader.traversal_order.rank]}
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
