"""GPU delivery under a GPU that runs behind: every batch the GPU reads must be exactly the beton's.

The loader reuses pinned (and device) buffers slot by slot. If a slot were rewritten while an
asynchronous copy of its previous batch was still queued on the GPU, the GPU would read a
half-new batch: silent corruption. Here each step queues ``torch.cuda._sleep`` before its
checksum, so the GPU falls far behind the loader, and every checksum is compared with the
beton's pixels at the end. Runs only where CUDA is present (``make gpu-check``); the mechanism
itself is tested on CPU in tests/test_loader.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import jit_ffcv.epoch
from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.ops import flip_mask
from jit_ffcv.synthetic import SyntheticFolder
from tests.helpers.data import SMALL, read_beton
from writers.beton import replicate_beton

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run `make gpu-check` there")

SEED, FLIP, BATCH, EPOCHS = 3, 0.5, 16, 2
SLEEP_CYCLES = 20_000_000  # ~10 ms of GPU time per step: far slower than the loader on these tiny images


def weights(shape: tuple[int, ...]) -> np.ndarray:
    """Position weights: a checksum with them changes if any pixel moves (a flip) or changes."""
    return (np.arange(int(np.prod(shape)), dtype=np.int64) % 251 + 1).reshape(shape)


def expected_checksums(images: np.ndarray, order: list[int], epoch: int) -> np.ndarray:
    """Checksums of the NCHW uint8 images the loader must deliver for ``order`` (flips included)."""
    picked = images[order]
    flips = flip_mask(SEED, epoch, np.asarray(order), FLIP)
    picked[flips] = picked[flips][:, :, ::-1]
    chw = picked.transpose(0, 3, 1, 2).astype(np.int64)
    return (chw * weights(chw.shape[1:])).reshape(len(order), -1).sum(axis=1)


def delayed_run(loader, delivery: str) -> list[tuple[np.ndarray, list[int], int]]:  # type: ignore[no-untyped-def]
    """Iterate epochs with the GPU held back; checksums are computed on the GPU, read at the end."""
    device = torch.device("cuda")
    runs = []
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        order = list(loader.sampler)
        w = None
        sums = []
        for x, _ in loader:
            if delivery == "cpu_batches_copied_non_blocking":
                assert x.device.type == "cpu"
                x = x.to(device, non_blocking=True)
            assert x.device.type == "cuda"
            if w is None:
                w = torch.from_numpy(weights(tuple(x.shape[1:]))).to(device)
            torch.cuda._sleep(SLEEP_CYCLES)  # the GPU runs behind from here on
            sums.append((x.to(torch.int64) * w).flatten(1).sum(1))
        torch.cuda.synchronize()
        got = torch.cat(sums).cpu().numpy()
        runs.append((got, order[: len(got)], epoch))
    return runs


@pytest.fixture(scope="module")
def big_beton(raw_beton: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic raw beton 20 times over: 25 batches per epoch, far more than the loader's slots."""
    out = tmp_path_factory.mktemp("gpu") / "train_x20.beton"
    replicate_beton(raw_beton, out, 20)
    return out


def make_loader(synthetic: SyntheticFolder, beton: Path, delivery: str):  # type: ignore[no-untyped-def]
    dm = JiTDataModule(str(synthetic.root), img_size=SMALL, batch_size=BATCH, num_workers=2, mode="raw",
                       train_beton=str(beton), seed=SEED, flip_prob=FLIP, batches_ahead=2,
                       device="cuda" if delivery == "on_device" else "cpu")
    dm.prepare_data()  # the synthetic folder has a val/ split: its small beton is written once
    dm.setup("fit")
    return dm.train_dataloader()


@pytest.mark.parametrize("delivery", ["cpu_batches_copied_non_blocking", "on_device"])
def test_every_batch_the_gpu_reads_is_exact(synthetic: SyntheticFolder, big_beton: Path, delivery: str) -> None:
    images, _ = read_beton(big_beton)
    runs = delayed_run(make_loader(synthetic, big_beton, delivery), delivery)
    for got, order, epoch in runs:
        assert len(got) == len(order) == 25 * BATCH  # many more batches than the loader's slots
        bad = np.flatnonzero(got != expected_checksums(images, order, epoch))
        assert bad.size == 0, f"epoch {epoch}: {bad.size} of {len(got)} images corrupted, first at {bad[:5]}"


def test_without_the_release_events_the_stress_test_sees_corruption(
    synthetic: SyntheticFolder, big_beton: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stress test has teeth: with slot release disabled, the delayed GPU reads rewritten buffers."""
    monkeypatch.setattr(jit_ffcv.epoch, "release_event", lambda: None)
    images, _ = read_beton(big_beton)
    runs = delayed_run(make_loader(synthetic, big_beton, "cpu_batches_copied_non_blocking"),
                       "cpu_batches_copied_non_blocking")
    corrupted = sum(int((got != expected_checksums(images, order, epoch)).sum()) for got, order, epoch in runs)
    assert corrupted > 0
