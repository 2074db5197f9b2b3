"""2-process CPU DDP fit for tests/test_resume.py (not a test module): checkpoint every step, or resume.

``python tests/helpers/resume_ddp_fit.py DATA BETON_DIR OUT CKPT_DIR [CKPT_PATH]``: without CKPT_PATH, fits
2 epochs saving ``CKPT_DIR/step=K.ckpt`` after every step; with it, resumes from that checkpoint.
Each rank writes ``OUT/rank{r}.json`` ((epoch, batch_idx, labels) per step) and ``OUT/rank{r}.npz``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from jit_ffcv.datamodule import JiTDataModule

BATCH, SEED, FLIP = 3, 5, 0.5


class Recorder(pl.LightningModule):
    """Records (epoch, batch_idx, labels) and pixels of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 5)
        self.steps: list[tuple[int, int, list[int]]] = []
        self.pixels: list[np.ndarray] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.steps.append((self.current_epoch, batch_idx, y.tolist()))
        self.pixels.append(x.numpy().copy())
        return torch.nn.functional.cross_entropy(self.head(x.float().mean((2, 3)) / 255), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(data: str, beton_dir: str, out: str, ckpt_dir: str, ckpt_path: str | None = None) -> None:
    dm = JiTDataModule(data_path=data, img_size=64, batch_size=BATCH, num_workers=2, mode="raw", write_workers=0,
                       beton_dir=beton_dir, seed=SEED, flip_prob=FLIP)
    callbacks = [] if ckpt_path else [ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1,
                                                      save_top_k=-1)]
    model = Recorder()
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                         callbacks=callbacks, enable_checkpointing=not ckpt_path, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    rank = trainer.global_rank
    Path(out, f"rank{rank}.json").write_text(json.dumps(model.steps))
    np.save(Path(out, f"rank{rank}.npy"), np.concatenate(model.pixels) if model.pixels else np.zeros(0, np.uint8))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:6])
