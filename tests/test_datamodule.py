"""JiTDataModule: writing, exact batches, sampler view, sharding, errors, Lightning epochs."""

from __future__ import annotations

import argparse
import gc
import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numba
import numpy as np
import pytest
import torch

from jit_ffcv.datamodule import JiTDataModule, create_jit_datamodule
from jit_ffcv.decode_threads import DecodeThread
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import flip_mask
from jit_ffcv.order import epoch_order
from jit_ffcv.synthetic import SyntheticFolder
from tests.helpers.data import read_beton, wait_until
from writers.metadata import BetonMismatchError

N, B, SEED = 20, 4, 5  # valid train samples, batch size, seed


@pytest.fixture(scope="module")
def beton_dir(synthetic: SyntheticFolder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Betons written by a DataModule's prepare_data (not the session fixtures' files)."""
    out = tmp_path_factory.mktemp("betons")
    dm = JiTDataModule(data_path=str(synthetic.root), img_size=64, batch_size=B, num_workers=1, mode="raw",
                       write_workers=0, beton_dir=str(out))
    assert not dm.beton_path("train").exists()
    dm.prepare_data()
    assert dm.beton_path("train") == out / "train_64_raw.beton"
    assert dm.beton_path("val") == out / "val_64_raw.beton"
    assert dm.beton_path("train").is_file() and dm.beton_path("val").is_file()
    return out


@pytest.fixture(scope="module")
def reference(beton_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stored images (N,H,W,3) and labels of the train beton."""
    return read_beton(beton_dir / "train_64_raw.beton")


def make_dm(synthetic: SyntheticFolder, beton_dir: Path, **kwargs: Any) -> JiTDataModule:
    options: dict[str, Any] = dict(data_path=str(synthetic.root), img_size=64, batch_size=B, num_workers=1,
                                   mode="raw", write_workers=0, beton_dir=str(beton_dir), seed=SEED)
    options.update(kwargs)
    dm = JiTDataModule(**options)
    dm.setup("fit")
    return dm


def run_epoch(loader: JiTLoader) -> tuple[list[int], np.ndarray, np.ndarray, int]:
    """(sampler order, images, labels, epoch) of the loader's next epoch; batches copied out of FFCV."""
    epoch = loader.sampler.epoch
    order = list(loader.sampler)
    batches = [(x.numpy().copy(), y.numpy().copy()) for x, y in loader]
    for x, y in batches:
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert x.shape[1:] == (3, 64, 64) and 0 < len(x) == len(y) <= B
    assert [len(x) for x, _ in batches[:-1]] == [B] * (len(batches) - 1)  # only the last may be partial
    images = np.concatenate([x for x, _ in batches]) if batches else np.zeros((0, 3, 64, 64), np.uint8)
    labels = np.concatenate([y for _, y in batches]) if batches else np.zeros(0, np.int64)
    return order, images, labels, epoch


def expected_images(reference: np.ndarray, order: list[int], epoch: int, prob: float) -> np.ndarray:
    """NCHW pixels of ``order`` with the flips of ``epoch``."""
    out = reference[order].copy()
    flips = flip_mask(SEED, epoch, order, prob)
    out[flips] = out[flips][:, :, ::-1]
    return out.transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- #
# prepare_data / setup / batches
# --------------------------------------------------------------------------- #
def test_setup_reads_both_splits(synthetic: SyntheticFolder, beton_dir: Path) -> None:
    dm = make_dm(synthetic, beton_dir)
    assert sorted(dm._meta) == ["train", "val"]
    assert dm._meta["train"].num_samples == N and dm._meta["val"].num_samples == 4
    dm.prepare_data()  # betons exist: nothing is rewritten
    assert sorted(p.name for p in beton_dir.glob("*.beton")) == ["train_64_raw.beton", "val_64_raw.beton"]


@pytest.mark.parametrize("prob", [0.0, 0.5])
def test_batches_are_exact(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple, prob: float) -> None:
    ref_images, ref_labels = reference
    loader = make_dm(synthetic, beton_dir, flip_prob=prob).train_dataloader()
    assert isinstance(loader, JiTLoader) and len(loader) == N // B
    epochs = {}
    for epoch in (0, 1):  # the loader advances by itself after a full epoch
        order, images, labels, seen = run_epoch(loader)
        assert seen == epoch and sorted(order) == list(range(N))
        assert images.shape == (N, 3, 64, 64)
        flips = flip_mask(SEED, epoch, order, prob)
        assert flips.sum() == 0 if prob == 0 else 0 < flips.sum() < N
        assert np.array_equal(images, expected_images(ref_images, order, epoch, prob))
        assert labels.tolist() == ref_labels[order].tolist()
        epochs[epoch] = order
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_is_what_the_batches_deliver(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple,
                                             drop_last: bool) -> None:
    """W=3: 7 samples per rank, B=4: one full batch (+ a partial one unless drop_last)."""
    ref_images, ref_labels = reference
    loader = make_dm(synthetic, beton_dir, num_replicas=3, rank=1, drop_last=drop_last,
                     flip_prob=0.5).train_dataloader()
    assert len(loader.sampler) == 7 and len(loader) == (1 if drop_last else 2)
    loader.set_epoch(2)
    order, images, labels, epoch = run_epoch(loader)
    assert epoch == 2 and len(order) == 7
    delivered = order[:4] if drop_last else order
    assert labels.tolist() == ref_labels[delivered].tolist()
    assert np.array_equal(images, expected_images(ref_images, delivered, 2, 0.5))


def test_sampler_orders_are_deterministic(synthetic: SyntheticFolder, beton_dir: Path) -> None:
    first = make_dm(synthetic, beton_dir).train_dataloader()
    second = make_dm(synthetic, beton_dir).train_dataloader()
    other_seed = make_dm(synthetic, beton_dir, seed=SEED + 1).train_dataloader()
    orders = {}
    for epoch in (0, 1, 2):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        other_seed.set_epoch(epoch)
        assert first.sampler.epoch == epoch
        orders[epoch] = list(first.sampler)
        assert orders[epoch] == list(second.sampler) == list(first.sampler)
        assert orders[epoch] != list(other_seed.sampler)
        # the same as the pure function with the loader's pages and buffer (2 * batch size)
        order = first.traversal_order
        assert orders[epoch] == epoch_order(order.sample_pages, np.arange(N), kind="quasi_random", num_replicas=1,
                                            rank=0, seed=SEED, epoch=epoch, buffer_pages=2 * B).tolist()
    assert len({tuple(o) for o in orders.values()}) == 3
    first.sampler.set_epoch(0)
    assert list(first.sampler) == orders[0]
    with pytest.raises(ValueError, match="epoch"):
        first.set_epoch(-1)


def test_epoch_starts_at_first_next(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple) -> None:
    """Lightning calls iter() to check iterability and before set_epoch(0): neither may consume an epoch."""
    loader = make_dm(synthetic, beton_dir).train_dataloader()
    unused = iter(loader)
    assert loader.sampler.epoch == 0
    assert loader._running is None and loader._decoder is None  # nothing decoded, no thread started
    del unused
    assert loader._running is None and loader._decoder is None
    it = iter(loader)
    loader.set_epoch(3)  # the epoch is read when the first batch is requested
    labels = np.concatenate([y.numpy().copy() for _, y in it])
    loader.set_epoch(3)
    assert labels.tolist() == reference[1][list(loader.sampler)].tolist()
    assert loader.sampler.epoch == 3
    loader.set_epoch(3)
    run_epoch(loader)
    assert loader.sampler.epoch == 4


@pytest.mark.parametrize("workers", [1, 2])
def test_abandoned_epoch_stops_decoding(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple,
                                        workers: int) -> None:
    loader = make_dm(synthetic, beton_dir, num_workers=workers).train_dataloader()
    order = list(loader.sampler)
    it = iter(loader)
    first_x, first_y = next(it)
    assert first_y.tolist() == reference[1][order[:B]].tolist()
    running, decoder = loader._running, loader._decoder
    assert not running.finished.is_set() and decoder.busy()  # it decodes ahead
    del it, first_x, first_y  # e.g. Lightning's limit_train_batches: the epoch is left unfinished
    assert running.finished.wait(timeout=10) and loader._running is None
    assert wait_until(lambda: not decoder.busy())
    # the loader is still usable, on the same threads: the next epoch (1) is complete and exact
    order, _, labels, epoch = run_epoch(loader)
    assert epoch == 1 and labels.tolist() == reference[1][order].tolist()
    assert loader._decoder is decoder and decoder.is_alive()


@pytest.mark.parametrize("workers", [1, 2])
def test_num_workers_threads_per_loader_and_none_after_it(synthetic: SyntheticFolder, beton_dir: Path,
                                                          workers: int) -> None:
    """Epochs share the loader's threads (a fresh one per epoch starts slowly under numba's TBB layer); a dropped
    loader leaves no thread behind, however many epochs and loaders ran."""

    def decoders() -> set[threading.Thread]:
        gc.collect()  # a thread still finishing an epoch keeps its loader (often in a cycle) past one collect
        return {t for t in threading.enumerate() if isinstance(t, DecodeThread)}

    before = decoders()
    dm = make_dm(synthetic, beton_dir, num_workers=workers)
    for _ in range(3):
        loader = dm.train_dataloader()  # the DataModule drops its previous loader
        gc.collect()
        for _ in range(3):
            run_epoch(loader)
        assert wait_until(lambda: len(decoders() - before) == workers)  # this loader's; the previous one's are gone
    del dm, loader
    gc.collect()
    assert wait_until(lambda: decoders() - before == set())


def test_val_loader_is_sequential_and_unflipped(synthetic: SyntheticFolder, beton_dir: Path) -> None:
    val_images, val_labels = read_beton(beton_dir / "val_64_raw.beton")
    assert sorted(val_labels.tolist()) == [0, 0, 2, 2]  # val keeps train's class indices (stored shuffled)
    for world in (1, 2):
        for rank in range(world):
            loader = make_dm(synthetic, beton_dir, num_replicas=world, rank=rank, flip_prob=1.0).val_dataloader()
            assert isinstance(loader, JiTLoader)
            order, images, labels, _ = run_epoch(loader)
            expected = list(range(rank * 4 // world, (rank + 1) * 4 // world))
            assert order == expected and labels.tolist() == val_labels[expected].tolist()
            assert np.array_equal(images, val_images[expected].transpose(0, 3, 1, 2))


def test_more_workers_than_cores(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple) -> None:
    """JiT's default num_workers=12 on a smaller machine: capped at numba's limit instead of failing."""
    dm = make_dm(synthetic, beton_dir, num_workers=4 * numba.config.NUMBA_NUM_THREADS)
    loader = dm.train_dataloader()
    assert loader.num_workers == numba.config.NUMBA_NUM_THREADS
    order, images, labels, _ = run_epoch(loader)
    assert labels.tolist() == reference[1][order].tolist()
    assert np.array_equal(images, expected_images(reference[0], order, 0, 0.5))


# --------------------------------------------------------------------------- #
# sharding
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("sampler_drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_steps_and_partition_over_ranks(synthetic: SyntheticFolder, beton_dir: Path, world: int,
                                        sampler_drop_last: bool) -> None:
    per_rank = N // world if sampler_drop_last else math.ceil(N / world)
    orders = []
    for rank in range(world):
        dm = make_dm(synthetic, beton_dir, num_replicas=world, rank=rank, sampler_drop_last=sampler_drop_last)
        loader = dm.train_dataloader()
        assert len(loader) == per_rank // B
        assert len(loader.sampler) == per_rank
        info = dm.get_dataset_info()
        assert (info["num_replicas"], info["rank"]) == (world, rank)
        assert (info["samples_per_rank"], info["batches_per_rank"]) == (per_rank, per_rank // B)
        loader.set_epoch(1)
        orders.append(list(loader.sampler))
    assert [len(o) for o in orders] == [per_rank] * world
    counts = Counter(i for o in orders for i in o)
    if sampler_drop_last:
        # N//W*W distinct samples, each once; the other N % W are left out this epoch
        assert sum(counts.values()) == len(counts) == (N // world) * world
        assert set(counts) <= set(range(N))
    else:
        # every sample, plus exactly ceil(N/W)*W - N padding repeats
        assert set(counts) == set(range(N))
        assert sum(c - 1 for c in counts.values()) == per_rank * world - N
        assert max(counts.values()) <= 2


def test_dataset_info(synthetic: SyntheticFolder, beton_dir: Path) -> None:
    dm = make_dm(synthetic, beton_dir, num_replicas=3, rank=2, drop_last=False)
    info = dm.get_dataset_info()
    assert info["num_samples"] == N and info["num_classes"] == 4
    assert info["class_names"] == synthetic.classes
    assert (info["samples_per_rank"], info["batches_per_rank"]) == (7, 2)  # ceil(20/3)=7, ceil(7/4)=2
    assert (info["num_replicas"], info["rank"], info["img_size"], info["mode"]) == (3, 2, 64, "raw")
    assert info["train_beton"] == str(beton_dir / "train_64_raw.beton")
    assert info["val_num_samples"] == 4 and info["val_beton"] == str(beton_dir / "val_64_raw.beton")


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"mode": "png"}, "mode"),
        ({"order": "shuffle"}, "order"),
        ({"output": "fp16"}, "output"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"flip_prob": -0.1}, "flip_prob"),
        ({"img_size": 16}, "img_size"),
        ({"img_size": 64.0}, "img_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_replicas": 2, "rank": 2}, "rank"),
    ],
)
def test_bad_options_name_the_option(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        JiTDataModule(data_path=str(tmp_path), **kwargs)


@pytest.mark.parametrize("kwargs,key", [({"img_size": 32}, "img_size"), ({"mode": "jpg"}, "mode")])
def test_mismatching_beton_is_refused(tmp_path: Path, beton_dir: Path, kwargs: dict, key: str) -> None:
    options = dict(data_path=str(tmp_path), img_size=64, mode="raw", train_beton=str(beton_dir / "train_64_raw.beton"))
    options.update(kwargs)
    dm = JiTDataModule(**options)
    with pytest.raises(BetonMismatchError, match=key):
        dm.setup("fit")


def test_missing_data(tmp_path: Path) -> None:
    dm = JiTDataModule(data_path=str(tmp_path / "nowhere"), img_size=64, mode="raw", beton_dir=str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="no .*nowhere/train to write it from"):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match=r"prepare_data\(\)"):
        dm.setup("fit")
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- #
# JiT's argparse namespace
# --------------------------------------------------------------------------- #
def test_create_jit_datamodule_maps_fields(tmp_path: Path) -> None:
    args = argparse.Namespace(data_path=str(tmp_path), img_size=64, batch_size=4, num_workers=1, pin_mem=False,
                              seed=7, lr=1e-4)
    dm = create_jit_datamodule(args, mode="raw", flip_prob=0.25)
    assert (dm.data_path, dm.img_size, dm.batch_size, dm.num_workers) == (tmp_path, 64, 4, 1)
    assert (dm.pin_memory, dm.seed, dm.mode, dm.flip_prob) == (False, 7, "raw", 0.25)
    assert dm.beton_path("train") == tmp_path / "ffcv" / "train_64_raw.beton"
    bare = create_jit_datamodule(argparse.Namespace(data_path=str(tmp_path), img_size=256, batch_size=8,
                                                    num_workers=2))
    assert (bare.pin_memory, bare.seed, bare.mode) == (True, 0, "jpg")


# --------------------------------------------------------------------------- #
# Lightning
# --------------------------------------------------------------------------- #
class Recorder(pl.LightningModule):
    """Tiny model that records every batch it trains on, per epoch, and the sampler order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 4)
        self.images: dict[int, list[np.ndarray]] = {}
        self.labels: dict[int, list[int]] = {}
        self.orders: dict[int, list[int]] = {}

    def on_train_epoch_start(self) -> None:
        sampler = self.trainer.train_dataloader.sampler
        assert sampler.epoch == self.current_epoch
        self.orders[self.current_epoch] = list(sampler)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.images.setdefault(self.current_epoch, []).append(x.numpy().copy())
        self.labels.setdefault(self.current_epoch, []).extend(y.tolist())
        return torch.nn.functional.cross_entropy(self.head(x.float().mean((2, 3)) / 255), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_advances_the_epoch(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple) -> None:
    ref_images, ref_labels = reference
    dm = JiTDataModule(data_path=str(synthetic.root), img_size=64, batch_size=B, num_workers=1, mode="raw",
                       write_workers=0, beton_dir=str(beton_dir), seed=SEED, flip_prob=0.5)
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(model, datamodule=dm)

    loader = trainer.train_dataloader
    assert type(loader) is JiTLoader and loader is dm._train_loader
    assert type(loader.sampler).__name__ == "EpochSampler"
    assert sorted(model.labels) == [0, 1]
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        order = list(loader.sampler)
        assert model.orders[epoch] == order
        assert model.labels[epoch] == ref_labels[order].tolist()
        # pixels identify the samples and the epoch of their flips
        assert np.array_equal(np.concatenate(model.images[epoch]), expected_images(ref_images, order, epoch, 0.5))
    assert model.orders[0] != model.orders[1]
    # no decoding thread is left behind (each epoch was consumed, none was started for nothing)
    for thread in [t for t in threading.enumerate() if isinstance(t, DecodeThread)]:
        assert wait_until(lambda thread=thread: not thread.busy.is_set())


def test_new_epoch_stops_a_still_open_one(synthetic: SyntheticFolder, beton_dir: Path,
                                          reference: tuple[np.ndarray, np.ndarray]) -> None:
    """Two live epochs would share the reused buffers: starting the second ends the first."""
    loader = make_dm(synthetic, beton_dir, flip_prob=0.0).train_dataloader()
    first = iter(loader)
    next(first)  # epoch 0 is running; its generator is never closed
    running = loader._running
    order = list(loader.sampler)  # epoch 1
    labels = [y.clone() for _, y in loader]
    assert running.finished.is_set() and loader._running is None
    assert torch.cat(labels).tolist() == reference[1][order[: len(loader) * B]].tolist()


# --------------------------------------------------------------------------- #
# drop-in batches: layout and labels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("channels_last", [False, True])
def test_layout_is_contiguous_nchw_by_default(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple,
                                              channels_last: bool) -> None:
    loader = make_dm(synthetic, beton_dir, channels_last=channels_last, flip_prob=0.0).train_dataloader()
    order = list(loader.sampler)
    x, y = next(iter(loader))
    assert x.shape == (B, 3, 64, 64) and x.dtype == torch.uint8
    assert x.is_contiguous() is not channels_last
    assert x.is_contiguous(memory_format=torch.channels_last) is channels_last
    if not channels_last:
        assert x.view(B, -1).shape == (B, 3 * 64 * 64)  # what PILToTensor + default_collate allow
    assert np.array_equal(x.numpy(), reference[0][order[:B]].transpose(0, 3, 1, 2))
    assert y.tolist() == reference[1][order[:B]].tolist()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_labels_are_always_a_vector(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple,
                                    batch_size: int) -> None:
    """Batch size 1, and a last partial batch of 1 (val: 4 samples in batches of 3), give labels (B,)."""
    dm = make_dm(synthetic, beton_dir, batch_size=batch_size)
    val_labels = read_beton(beton_dir / "val_64_raw.beton")[1]
    for loader, expected in ((dm.train_dataloader(), None), (dm.val_dataloader(), val_labels)):
        order = list(loader.sampler)
        batches = [y.clone() for _, y in loader]  # FFCV reuses its buffers
        for y in batches:
            assert y.dtype == torch.int64 and y.ndim == 1
        if expected is not None:
            assert [len(y) for y in batches] == ([1] * 4 if batch_size == 1 else [3, 1])
            assert torch.cat(batches).tolist() == expected.tolist()
        else:
            assert torch.cat(batches).tolist() == reference[1][order[: len(loader) * batch_size]].tolist()


def test_pin_memory_reaches_the_loader(synthetic: SyntheticFolder, beton_dir: Path) -> None:
    assert make_dm(synthetic, beton_dir, pin_memory=False).train_dataloader().pin_memory is False
    assert make_dm(synthetic, beton_dir).train_dataloader().pin_memory is True


# --------------------------------------------------------------------------- #
# constructor checks
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.0}, "seed"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"quality": "90"}, "quality"),
        ({"batch_size": True}, "batch_size"),
        ({"num_workers": True}, "num_workers"),
        ({"batches_ahead": False}, "batches_ahead"),
        ({"img_size": np.bool_(True)}, "img_size"),
        ({"num_replicas": True}, "num_replicas"),
        ({"num_replicas": 2, "rank": True}, "rank"),
        ({"buffer_pages": 0}, "buffer_pages"),
        ({"write_workers": -1}, "write_workers"),
        ({"pin_memory": "no"}, "pin_memory"),
        ({"channels_last": 1}, "channels_last"),
        ({"flip_prob": "0.5"}, r"flip_prob must be a number in \[0, 1\], got '0.5'"),
        ({"flip_prob": True}, "flip_prob"),
        ({"device": "nonsense"}, r"device must be a torch device .* got 'nonsense'"),
    ],
)
def test_bad_counts_and_seeds_are_refused(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        JiTDataModule(data_path=str(tmp_path), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_without_cuda_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available in this process; pass device='cpu'"):
        JiTDataModule(data_path=str(tmp_path), device="cuda")


def test_options_are_read_from_hparams_only(tmp_path: Path) -> None:
    dm = JiTDataModule(data_path=str(tmp_path), batch_size=np.int32(8), flip_prob=1)
    assert dm.hparams.batch_size == dm.batch_size == 8 and type(dm.hparams.batch_size) is int
    assert dm.hparams.flip_prob == 1.0 and type(dm.flip_prob) is float
    assert "batch_size" not in vars(dm)  # one copy: hparams
    assert dm.data_path == tmp_path and dm.beton_dir == tmp_path / "ffcv"
    with pytest.raises(AttributeError, match="no attribute 'no_such_option'"):
        _ = dm.no_such_option


def test_numpy_integers_are_accepted(tmp_path: Path) -> None:
    dm = JiTDataModule(data_path=str(tmp_path), img_size=np.int64(64), batch_size=np.int32(8),
                       num_workers=np.uint8(2), seed=np.int64(2**63 - 1), quality=np.int16(95),
                       num_replicas=np.int64(2), rank=np.int64(1), batches_ahead=np.int64(2))
    values = (dm.img_size, dm.batch_size, dm.num_workers, dm.seed, dm.quality, dm.num_replicas, dm.rank,
              dm.batches_ahead)
    assert values == (64, 8, 2, 2**63 - 1, 95, 2, 1, 2)
    assert all(type(v) is int for v in values)
    assert dm.beton_path("train").name == "train_64_jpg95.beton"
    raw = JiTDataModule(data_path=str(tmp_path), mode="raw", quality=0)  # quality is unused for raw betons
    assert raw.beton_path("train").name == "train_256_raw.beton"


# --------------------------------------------------------------------------- #
# beton header against its sidecar
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("key,value,message", [("num_samples", 21, "num_samples=20"), ("img_size", 32, "height=64")])
def test_header_must_match_the_sidecar(tmp_path: Path, beton_dir: Path, key: str, value: int, message: str) -> None:
    """A sidecar that passes its own checks but does not describe the beton next to it."""
    import json
    import shutil

    beton = tmp_path / "train.beton"
    shutil.copy(beton_dir / "train_64_raw.beton", beton)
    data = json.loads((beton_dir / "train_64_raw.beton.json").read_text())
    data[key] = value
    (tmp_path / "train.beton.json").write_text(json.dumps(data))
    dm = JiTDataModule(data_path=str(tmp_path), img_size=data["img_size"], mode="raw", train_beton=str(beton))
    with pytest.raises(BetonMismatchError, match=message) as error:
        dm.setup("fit")
    assert str(beton) in str(error.value) and "train.beton.json" in str(error.value)


# --------------------------------------------------------------------------- #
# num_workers=0, explicit betons without val, betons under custom names
# --------------------------------------------------------------------------- #
def test_num_workers_zero_runs_one_thread(synthetic: SyntheticFolder, beton_dir: Path, reference: tuple) -> None:
    """JiT's debugging value: one decoding thread, the very batches of any other count."""
    ref_images, ref_labels = reference
    dm = make_dm(synthetic, beton_dir, num_workers=0, flip_prob=0.5)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1
    order, images, labels, epoch = run_epoch(loader)
    assert epoch == 0 and len(order) == N and images.shape == (N, 3, 64, 64)
    assert np.array_equal(images, expected_images(ref_images, order, 0, 0.5))
    assert labels.tolist() == ref_labels[order].tolist()
    assert order == list(make_dm(synthetic, beton_dir, num_workers=2, flip_prob=0.5).train_dataloader().sampler)
    args = argparse.Namespace(data_path=str(synthetic.root), img_size=64, batch_size=B, num_workers=0)
    assert create_jit_datamodule(args).num_workers == 0


class CountSteps(pl.LightningModule):
    """Counts training and validation steps."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 2)
        self.steps = {"train": 0, "val": 0}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.steps["train"] += 1
        x, y = batch
        return torch.nn.functional.cross_entropy(self.head(x.float().mean((2, 3))), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.steps["val"] += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_train_beton_alone_means_no_validation(tmp_path: Path) -> None:
    """data_path has val/, but only train_beton is given: nothing is written, demanded or validated for val."""
    from jit_ffcv.synthetic import make_image_folder
    from writers.beton import write_split

    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=4, broken=False)
    train = tmp_path / "mine.beton"
    write_split(s.root, "train", train, img_size=32, mode="raw", num_workers=0, progress=False)
    dm = JiTDataModule(str(s.root), img_size=32, batch_size=2, num_workers=1, mode="raw", write_workers=0,
                       train_beton=str(train))
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(dm._meta) == ["train"] and dm.val_dataloader() == []
    assert not (s.root / "ffcv").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d", "mine.beton",
                                                                                              "mine.beton.json"]
    model = CountSteps()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert model.steps == {"train": 4, "val": 0}
    assert not (s.root / "ffcv").exists()
    with_val = JiTDataModule(str(s.root), img_size=32, batch_size=2, mode="raw", write_workers=0,
                             train_beton=str(train), val_beton=str(tmp_path / "v.beton"))
    with_val.prepare_data()  # val_beton given: written from data_path/val
    with_val.setup("fit")
    assert with_val._meta["val"].num_samples == 2


@pytest.fixture()
def custom(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset root and its ffcv/ folder holding one train beton under a custom name (64 px raw)."""
    from jit_ffcv.synthetic import make_image_folder
    from writers.beton import write_split

    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False, val=False)
    write_split(s.root, "train", s.root / "ffcv" / "mine.beton", img_size=64, mode="raw", num_workers=0,
                progress=False)
    return s.root, s.root / "ffcv"


def test_beton_under_a_custom_name_is_found(custom: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    root, folder = custom
    dm = JiTDataModule(str(root), img_size=64, batch_size=2, num_workers=1, mode="raw", write_workers=0)
    with caplog.at_level("INFO", logger="jit_ffcv.datamodule"):
        dm.prepare_data()
    assert sorted(p.name for p in folder.iterdir()) == ["mine.beton", "mine.beton.json"]
    assert [r.getMessage() for r in caplog.records] == [
        f"using {folder / 'mine.beton'} for split train: its sidecar matches (train_64_raw.beton is not there)"]
    dm.setup("fit")
    assert dm.beton_path("train") == folder / "mine.beton" and dm.get_dataset_info()["num_samples"] == 4


@pytest.mark.parametrize("kwargs, why", [
    ({"img_size": 32}, "img_size=64 (wanted 32)"),
    ({"mode": "jpg", "quality": 90}, "mode='raw' (wanted 'jpg'), quality=None (wanted 90)"),
])
def test_mismatching_custom_beton_is_named_in_the_log(custom: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
                                                      kwargs: dict, why: str) -> None:
    root, folder = custom
    options: dict[str, Any] = dict(img_size=64, batch_size=2, num_workers=1, mode="raw", write_workers=0)
    options.update(kwargs)
    dm = JiTDataModule(str(root), **options)
    with caplog.at_level("WARNING", logger="jit_ffcv.datamodule"):
        dm.prepare_data()
    written = dm.beton_path("train")
    assert written != folder / "mine.beton" and written.is_file()
    assert [r.getMessage() for r in caplog.records] == [
        f"writing {written}: none of the betons in {folder} matches split=train (mine.beton: {why})"]


def test_partial_or_foreign_custom_beton_is_not_used(custom: tuple[Path, Path], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A --limit write and a beton of another folder match every setting but are not the whole split."""
    from writers.beton import write_split

    root, folder = custom
    (folder / "mine.beton").unlink()
    (folder / "mine.beton.json").unlink()
    write_split(root, "train", folder / "part.beton", img_size=64, mode="raw", num_workers=0, progress=False, limit=3)
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    (other / "train" / "n00000000").symlink_to(root / "train" / "n00000000")
    write_split(other, "train", folder / "other.beton", img_size=64, mode="raw", num_workers=0, progress=False)
    dm = JiTDataModule(str(root), img_size=64, batch_size=2, num_workers=1, mode="raw", write_workers=0)
    with caplog.at_level("WARNING", logger="jit_ffcv.datamodule"):
        dm.prepare_data()
    assert dm.beton_path("train") == folder / "train_64_raw.beton"
    assert [r.getMessage() for r in caplog.records] == [
        f"writing {folder / 'train_64_raw.beton'}: none of the betons in {folder} matches split=train "
        f"(other.beton: source={str(other.resolve() / 'train')!r} (wanted {str(root.resolve() / 'train')!r}); "
        f"part.beton: limit=3 (wanted None))"]


def test_two_matching_custom_betons_are_an_error(custom: tuple[Path, Path]) -> None:
    root, folder = custom
    (folder / "copy.beton").write_bytes((folder / "mine.beton").read_bytes())
    (folder / "copy.beton.json").write_bytes((folder / "mine.beton.json").read_bytes())
    dm = JiTDataModule(str(root), img_size=64, batch_size=2, num_workers=1, mode="raw", write_workers=0)
    with pytest.raises(BetonMismatchError, match=(
            rf"^several betons in {folder} match split=train img_size=64 mode=raw: copy.beton, mine.beton; "
            r"pass train_beton= to choose one \(or delete the others\)$")):
        dm.prepare_data()
    assert sorted(p.name for p in folder.glob("*.beton")) == ["copy.beton", "mine.beton"]


@pytest.mark.parametrize("breakage, message", [
    ("extra val class", r"val has class folders that the train split lacks: \['n99999999'\]"),
    ("empty val class", "Found no valid file in"),
])
def test_prepare_data_checks_val_before_writing_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      breakage: str, message: str) -> None:
    """Unfixed, prepare_data wrote train in full before val's layout failed (JiT's path: main_jit.py, Lightning)."""
    import shutil

    import writers.beton
    from jit_ffcv.synthetic import make_image_folder

    s = make_image_folder(tmp_path / "d", num_classes=2, per_class=2, broken=False, val=True)
    val = s.root / "val"
    if breakage == "extra val class":
        (val / "n99999999").mkdir()
        shutil.copy(next((val / s.val_classes[0]).iterdir()), val / "n99999999" / "x.JPEG")
    else:
        for f in (val / s.val_classes[0]).iterdir():
            f.unlink()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was read before every split's layout was checked")

    monkeypatch.setattr(writers.beton, "encoded_in_order", refuse)
    dm = JiTDataModule(str(s.root), img_size=32, mode="raw", write_workers=0)
    with pytest.raises(Exception, match=message):
        dm.prepare_data()
    assert not (s.root / "ffcv").exists() or list((s.root / "ffcv").glob("*.beton")) == []
