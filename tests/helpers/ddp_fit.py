"""2-process CPU DDP fit used by tests/test_ddp.py (not a test module itself).

Run as ``python tests/helpers/ddp_fit.py DATA BETON_DIR OUT VAL_BETON``; Lightning's DDP launcher
re-runs this script for rank 1 with its own environment, so all work sits
under ``if __name__ == "__main__"``. Each rank writes ``OUT/rank{r}.json``
(sampler orders, delivered labels, val runs, world) and ``OUT/rank{r}.npz`` (pixels).
Validation runs for real: the sanity check, then after each epoch, with
``batches_ahead=1`` (4 buffer slots) and more val batches than that.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from jit_ffcv.datamodule import JiTDataModule

BATCH, SEED, FLIP = 4, 3, 0.5


class Recorder(pl.LightningModule):
    """Linear head on pooled pixels; records what each training step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 4)
        self.record: dict[str, dict] = {}
        self.pixels: dict[str, list[np.ndarray]] = {}
        self.val_runs: list[dict] = []
        self.val_pixels: list[list[np.ndarray]] = []

    def _epoch(self) -> dict:
        return self.record.setdefault(str(self.current_epoch), {"labels": [], "positions": []})

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        self._epoch()["sampler_epoch"] = loader.sampler.epoch
        self._epoch()["sampler"] = list(loader.sampler)
        self._epoch()["len_loader"] = len(loader)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._epoch()["labels"].append(y.tolist())
        self._epoch()["positions"].append(batch_idx)
        self.pixels.setdefault(str(self.current_epoch), []).append(x.numpy().copy())
        return torch.nn.functional.cross_entropy(self.head(x.float().mean((2, 3)) / 255), y)

    def on_validation_epoch_start(self) -> None:
        self.val_runs.append({"sanity": self.trainer.sanity_checking, "labels": []})
        self.val_pixels.append([])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_runs[-1]["labels"].append(y.tolist())
        self.val_pixels[-1].append(x.numpy().copy())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(data: str, beton_dir: str, out: str, val_beton: str) -> None:
    dm = JiTDataModule(data_path=data, img_size=64, batch_size=BATCH, num_workers=2, mode="raw", write_workers=0,
                       beton_dir=beton_dir, seed=SEED, flip_prob=FLIP, val_beton=val_beton, batches_ahead=1)
    model = Recorder()
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=2)
    trainer.fit(model, datamodule=dm)
    loader = trainer.train_dataloader
    world = dm._world()
    info = dm.get_dataset_info()
    result = {
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "dm_world": [world.num_replicas, world.rank],
        "info": {k: info[k] for k in ("num_replicas", "rank", "samples_per_rank", "batches_per_rank")},
        "loader_type": type(loader).__name__,
        "sampler_type": type(loader.sampler).__name__,
        "order_shard": [loader.traversal_order.num_replicas, loader.traversal_order.rank],
        "distributed": bool(loader.distributed),
        "epochs": model.record,
        "val_runs": model.val_runs,
    }
    rank = trainer.global_rank
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    pixels = {e: np.concatenate(p) for e, p in model.pixels.items()}
    pixels.update({f"val{i}": np.concatenate(p) for i, p in enumerate(model.val_pixels)})
    np.savez(Path(out, f"rank{rank}.npz"), **pixels)
    # Leave the gloo group cleanly: exiting with it alive can abort a rank at interpreter
    # shutdown ("terminate called without an active exception"), seen once in CI.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
