"""``jit-ffcv trace``: the traced samples, files, flips and pixels are those of the loader's batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jit_ffcv.cli import main as cli
from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.ops import flip_mask
from jit_ffcv.synthetic import make_image_folder
from jit_ffcv.trace import TraceOptions, options_from_file, trace
from tests.helpers.data import read_beton
from writers.folder import scan_split

B, SEED, FLIP, SIZE = 3, 7, 0.5, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset root, train beton): 4 classes x 9 images, raw, shuffled (with the index field)."""
    root = tmp_path_factory.mktemp("trace_data")
    make_image_folder(root, num_classes=4, per_class=9, broken=False, val=False)
    dm = make_dm(root, 1, 0)
    dm.prepare_data()
    return root, next((root / "ffcv").glob("train_*.beton"))


def make_dm(root: Path, world: int, rank: int) -> JiTDataModule:
    return JiTDataModule(data_path=str(root), img_size=SIZE, batch_size=B, num_workers=1, mode="raw", write_workers=0,
                         beton_dir=str(root / "ffcv"), seed=SEED, flip_prob=FLIP, num_replicas=world, rank=rank)


def loader_batch(root: Path, world: int, rank: int, epoch: int, step: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(stored ids, labels, NCHW pixels) of the training loader's batch ``step`` of ``epoch``."""
    dm = make_dm(root, world, rank)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.set_epoch(epoch)
    ids = list(loader.sampler)[step * B:(step + 1) * B]
    loader.set_epoch(epoch)
    for k, (x, y) in enumerate(loader):
        if k == step:
            return ids, y.numpy().copy(), x.numpy().copy()
    raise AssertionError(f"epoch {epoch} has no step {step}")


@pytest.mark.slow
def test_trace_equals_the_loaders_batch(data: tuple[Path, Path]) -> None:
    root, beton = data
    images, labels = read_beton(beton)
    scan = scan_split(root / "train")
    rng = np.random.default_rng(0)
    for _ in range(3):
        world = int(rng.integers(1, 4))
        rank, epoch = int(rng.integers(0, world)), int(rng.integers(0, 50))
        step = int(rng.integers(0, 36 // world // B))
        ids, y, x = loader_batch(root, world, rank, epoch, step)
        options = TraceOptions(epoch=epoch, step=step, rank=rank, world_size=world, batch_size=B, seed=SEED,
                               flip_prob=FLIP)
        traced = trace(beton, options, decode=True)
        assert [s.sample_id for s in traced] == ids
        assert [s.label for s in traced] == y.tolist() == labels[ids].tolist()
        assert [s.flip for s in traced] == flip_mask(SEED, epoch, np.array(ids), FLIP).tolist()
        assert np.array_equal(np.stack([s.image for s in traced]).transpose(0, 3, 1, 2), x)  # as delivered
        for s in traced:
            stored = images[s.sample_id]
            assert np.array_equal(s.image, stored[:, ::-1] if s.flip else stored)
            assert (s.path, s.label) == scan.samples[s.index]  # the file ImageFolder gives that index
            assert Path(s.path).parent.name == s.class_name == scan.classes[s.label]


def test_trace_cli_prints_the_batch_and_saves_its_grid(data: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root, beton = data
    options = TraceOptions(epoch=2, step=1, rank=1, world_size=2, batch_size=B, seed=SEED, flip_prob=FLIP)
    expected = trace(beton, options)
    png = tmp_path / "batch.png"
    assert cli(["trace", str(beton), "--epoch", "2", "--step", "1", "--rank", "1", "--world-size", "2",
                "--batch-size", str(B), "--seed", str(SEED), "--png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"epoch 2, step 1, rank 1 of 2: {B} samples (batch size {B}, seed {SEED}, quasi_random, "
                        f"flip_prob 0.5)")
    assert lines[2:2 + B] == [f"{k}\t{s.sample_id}\t{s.index}\t{s.label}\t{s.class_name}\t{'yes' if s.flip else 'no'}"
                              f"\t{s.path}" for k, s in enumerate(expected)]
    assert Image.open(png).size[0] > 2 * SIZE


def test_trace_reads_its_options_from_a_loader_state(data: tuple[Path, Path], tmp_path: Path) -> None:
    root, beton = data
    dm = make_dm(root, 1, 0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.set_epoch(4)
    state = tmp_path / "state.json"
    state.write_text(json.dumps(loader.state_dict()))
    options, loaded = options_from_file(state)
    assert options == {"batch_size": B, "seed": SEED, "order": "quasi_random", "buffer_pages": 2 * B,
                       "sampler_drop_last": False, "drop_last": True, "epoch": 4, "world_size": 1}
    traced = trace(beton, TraceOptions(step=0, **options), state=loaded)
    assert [s.sample_id for s in traced] == list(loader.sampler)[:B]


def test_trace_refuses_a_state_of_another_beton_and_a_step_out_of_range(data: tuple[Path, Path]) -> None:
    root, beton = data
    with pytest.raises(ValueError, match=r"--step 12 is out of range: epoch 0 has 12 steps on rank 0 of 1"):
        trace(beton, TraceOptions(epoch=0, step=12, batch_size=B, seed=SEED))
    dm = make_dm(root, 1, 0)
    dm.setup("fit")
    state = dm.train_dataloader().state_dict()
    with pytest.raises(ValueError, match=r"saved on a beton with layout 0{16}"):
        trace(beton, TraceOptions(epoch=0, step=0, batch_size=B, seed=SEED), state={**state, "layout": "0" * 16})


def test_trace_reads_a_lightning_checkpoint(data: tuple[Path, Path], tmp_path: Path) -> None:
    """Lightning keeps the loader state under its fit loop and the DataModule's arguments beside it."""
    import torch

    root, beton = data
    dm = make_dm(root, 2, 0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.set_epoch(3)
    ckpt = tmp_path / "step=9.ckpt"
    torch.save({"loops": {"fit_loop": {"state_dict": {"combined_loader": [loader.state_dict()]}}},
                "datamodule_hyper_parameters": {"flip_prob": 0.25, "seed": SEED, "batch_size": B, "rank": None,
                                                "num_replicas": None, "img_size": SIZE}}, ckpt)
    options, state = options_from_file(ckpt)
    assert state == loader.state_dict()
    assert options == {"flip_prob": 0.25, "seed": SEED, "batch_size": B, "order": "quasi_random",
                       "buffer_pages": 2 * B, "sampler_drop_last": False, "drop_last": True, "epoch": 3,
                       "world_size": 2}
