"""Validation under Lightning, single process: sanity check, val after each epoch, trainer.validate.

More val and train batches than the loader's buffer slots (batches_ahead=1: 4 slots), a
partial last val batch, and Lightning's one-batch prefetch: every pixel must still be exact.
"""

from __future__ import annotations

import threading
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.decode_threads import DecodeThread
from jit_ffcv.ops import flip_mask
from jit_ffcv.synthetic import SyntheticFolder
from tests.helpers.data import read_beton, wait_until

pytestmark = pytest.mark.slow  # a Lightning fit: `make test` runs it, `make check` does not

N, B, SEED, FLIP = 20, 3, 11, 0.5
VAL_SIZES = [3] * 6 + [2]  # 20 val samples in batches of 3: 7 batches > 4 slots, the last one partial
STEPS = N // B  # 6 train steps per epoch (drop_last)


class ValRecorder(pl.LightningModule):
    """Records (copies of) every train and val batch, and whether val ran as the sanity check."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 4)
        self.train_batches: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.val_runs: list[dict] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.train_batches.setdefault(self.current_epoch, []).append((x.numpy().copy(), y.numpy().copy()))
        return torch.nn.functional.cross_entropy(self.head(x.float().mean((2, 3)) / 255), y)

    def on_validation_epoch_start(self) -> None:
        self.val_runs.append({"sanity": self.trainer.sanity_checking, "batches": []})

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        assert x.is_contiguous() and x.view(len(x), -1).shape == (len(x), 3 * 64 * 64)
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        self.val_runs[-1]["batches"].append((x.numpy().copy(), y.numpy().copy()))
        self.log("val_loss", torch.nn.functional.cross_entropy(self.head(x.float().mean((2, 3)) / 255), y),
                 batch_size=len(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def train_beton(synthetic: SyntheticFolder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lightning_betons")
    dm = JiTDataModule(str(synthetic.root), img_size=64, batch_size=B, mode="raw", write_workers=0,
                       beton_dir=str(out))
    dm.prepare_data()
    return dm.beton_path("train")


def make_dm(synthetic: SyntheticFolder, beton: Path) -> JiTDataModule:
    """Val reads the train beton (20 samples, same classes): more val batches than the 4 slots."""
    return JiTDataModule(str(synthetic.root), img_size=64, batch_size=B, num_workers=2, mode="raw", seed=SEED,
                         flip_prob=FLIP, batches_ahead=1, train_beton=str(beton), val_beton=str(beton))


def trainer(**kwargs: object) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def check_val_run(run: dict, images: np.ndarray, labels: np.ndarray, sizes: list[int]) -> None:
    assert [len(y) for _, y in run["batches"]] == sizes
    seen = np.concatenate([y for _, y in run["batches"]])
    assert seen.tolist() == labels[: sum(sizes)].tolist()  # sequential, unflipped
    pixels = np.concatenate([x for x, _ in run["batches"]])
    assert np.array_equal(pixels, images[: sum(sizes)].transpose(0, 3, 1, 2))


def test_fit_runs_sanity_check_and_validation(synthetic: SyntheticFolder, train_beton: Path) -> None:
    images, labels = read_beton(train_beton)
    dm = make_dm(synthetic, train_beton)
    model = ValRecorder()
    fit = trainer(max_epochs=2, num_sanity_val_steps=2)
    fit.fit(model, datamodule=dm)

    assert [run["sanity"] for run in model.val_runs] == [True, False, False]
    check_val_run(model.val_runs[0], images, labels, VAL_SIZES[:2])
    for run in model.val_runs[1:]:
        check_val_run(run, images, labels, VAL_SIZES)
    assert "val_loss" in fit.callback_metrics
    # training (6 steps > 4 slots, Lightning prefetching) got exact, flipped pixels
    loader = fit.train_dataloader
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        order = list(loader.sampler)[: STEPS * B]
        got = model.train_batches[epoch]
        assert [len(y) for _, y in got] == [B] * STEPS
        assert np.concatenate([y for _, y in got]).tolist() == labels[order].tolist()
        expected = images[order].copy()
        flips = flip_mask(SEED, epoch, order, FLIP)
        expected[flips] = expected[flips][:, :, ::-1]
        assert np.array_equal(np.concatenate([x for x, _ in got]), expected.transpose(0, 3, 1, 2))

    # trainer.validate on the same DataModule
    trainer().validate(model, datamodule=dm)
    assert len(model.val_runs) == 4 and not model.val_runs[-1]["sanity"]
    check_val_run(model.val_runs[-1], images, labels, VAL_SIZES)
    for thread in [t for t in threading.enumerate() if isinstance(t, DecodeThread)]:  # every epoch ended
        assert wait_until(lambda thread=thread: not thread.busy.is_set())
