"""Kernels compiled once per process: later loaders compile nothing, any size or layout, RSS stays flat.

Also: the loader's epoch reaches every op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba.core import event

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import JPG_MODE, EpochCell, FlipDecoder, SeededHorizontalFlip, flip_mask
from jit_ffcv.traversal import SequentialOrder
from tests.helpers.data import pillow_images, read_beton
from writers.beton import write_split
from writers.ffcv_api import IMAGE_MODES, IntDecoder, Loader, OrderOption

pytestmark = pytest.mark.slow  # fresh processes with cold numba caches: `make test` runs it, `make check` does not

ROOT = Path(__file__).resolve().parents[1]
SEED = 11
N = 20  # valid samples in the synthetic train betons


def _datamodule(beton: Path, tmp_path: Path, mode: str, **kwargs: object) -> JiTDataModule:
    dm = JiTDataModule(data_path=str(tmp_path), train_beton=str(beton), val_beton=str(beton), img_size=64,
                       batch_size=4, num_workers=2, mode=mode, seed=SEED, **kwargs)
    dm.setup("fit")
    return dm


def _first_batches(dm: JiTDataModule) -> None:
    """A first batch of a train, a val and a resumed train loader."""
    train = dm.train_dataloader()
    batches = iter(train)
    next(batches)
    state = train.state_dict()
    next(iter(dm.val_dataloader()))
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    next(iter(resumed))


@pytest.mark.parametrize("channels_last", [False, True])
def test_loaders_after_the_first_compile_nothing(tmp_path: Path, raw_beton: Path, jpg_beton: Path,
                                                 channels_last: bool) -> None:
    """Train, val and resumed loaders of a second DataModule: no numba compile (nor disk-cache load) at all."""
    modules = [_datamodule(beton, tmp_path, mode, channels_last=channels_last)
               for beton, mode in ((raw_beton, "raw"), (jpg_beton, "jpg"))]
    for dm in modules:
        _first_batches(dm)
    with event.install_recorder("numba:compile") as compiles:
        for dm in modules:
            _first_batches(dm)
    compiled = [e.data.get("dispatcher") for _, e in compiles.buffer]
    assert compiled == [], f"compiled again: {compiled}"


_TWO_LOADERS = """
import json, sys, threading, os, numpy as np
threading.excepthook = lambda args: (print(args.exc_value, flush=True), os._exit(3))
from writers.ffcv_api import IntDecoder, ToTensor
from jit_ffcv.kernels import chw_copy, chw_mirror, mirror_inplace
from jit_ffcv.layout import ToCHW
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import FlipDecoder, SeededHorizontalFlip
from jit_ffcv.traversal import SequentialOrder
image, out = np.zeros((5, 7, 3), np.uint8), np.zeros((3, 5, 7), np.uint8)
chw_copy(image, out); chw_copy(image.reshape(-1).copy(), out); chw_mirror(image, out); mirror_inplace(image)
def loader(beton, ops, workers):
    return JiTLoader(beton, batch_size=8, num_workers=workers, order=SequentialOrder(), drop_last=False, seed=11,
                     pipelines={"image": ops + [ToTensor()], "label": [IntDecoder()], "index": None, "checksum": None})
loaders = {"raw_hwc": loader(sys.argv[1], [FlipDecoder(seed=11)], 1),
           "jpg_chw": loader(sys.argv[2], [FlipDecoder(seed=11, chw=True)], 2),
           "raw_tochw": loader(sys.argv[1], [FlipDecoder(flip_prob=0.0), SeededHorizontalFlip(seed=11), ToCHW()], 2),
           "jpg_hwc": loader(sys.argv[2], [FlipDecoder(seed=11)], 2)}
out = {name: np.concatenate([np.array(x) for x, _ in l]) for name, l in loaders.items()}  # epoch 0 of each
np.savez(sys.argv[3], **out)
"""


def test_loaders_of_two_sizes_and_layouts_share_kernels(synthetic, raw_beton: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Fresh process: kernels called directly first, then loaders of 64 px raw and 32 px JPEG, HWC and CHW.

    One and two threads, each compiled from its decoding thread (an empty numba cache: nothing loaded).
    FFCV's reader used to mutate numba's ``uint8[::1]`` type, and a kernel shared with a direct call then
    failed with a KeyError there (the loader hung).
    """
    small = tmp_path / "train_32_jpg90.beton"
    write_split(synthetic.root, "train", small, img_size=32, mode="jpg", quality=90, num_workers=0, progress=False)
    saved = tmp_path / "batches.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # cold: all compiled
    done = subprocess.run([sys.executable, "-c", _TWO_LOADERS, str(raw_beton), str(small), str(saved)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    got = np.load(saved)
    mask = flip_mask(SEED, 0, np.arange(N), 0.5)
    for name, plain in (("raw", read_beton(raw_beton)[0]), ("jpg", pillow_images(small))):
        flipped = plain.copy()
        flipped[mask] = flipped[mask][:, :, ::-1]
        for layout in {"raw": ("hwc", "tochw"), "jpg": ("hwc", "chw")}[name]:
            expected = flipped if layout == "hwc" else flipped.transpose(0, 3, 1, 2)
            assert np.array_equal(got[f"{name}_{layout}"], expected), (name, layout)


@pytest.mark.parametrize("ops", ["decoder", "op"])
def test_hand_built_loader_flips_per_epoch(raw_beton: Path, ops: str) -> None:
    """No cell passed anywhere: the loader hands its epoch to the ops (they flipped as in epoch 0 forever)."""
    image_ops = ([FlipDecoder(seed=SEED)] if ops == "decoder"
                 else [FlipDecoder(flip_prob=0.0), SeededHorizontalFlip(0.5, seed=SEED)])
    loader = JiTLoader(str(raw_beton), batch_size=8, num_workers=1, order=SequentialOrder(), drop_last=False,
                       pipelines={"image": image_ops, "label": [IntDecoder()], "index": None, "checksum": None})
    plain = read_beton(raw_beton)[0]
    for epoch in (0, 1, 2):
        loader.set_epoch(epoch)
        images = np.concatenate([np.array(x) for x, _ in loader])
        mask = flip_mask(SEED, epoch, np.arange(N), 0.5)
        expected = plain.copy()
        expected[mask] = expected[mask][:, :, ::-1]
        assert np.array_equal(images, expected), epoch
    assert all(op.epoch_cell is loader.epoch_cell for op in image_ops)


def test_bare_ffcv_loader_needs_a_cell_to_flip(raw_beton: Path) -> None:
    """FFCV's own Loader has no epoch to hand: a flip that needs one says so instead of repeating epoch 0."""
    def make(op: FlipDecoder) -> Loader:
        return Loader(str(raw_beton), batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL,
                      pipelines={"image": [op], "label": [IntDecoder()], "index": None, "checksum": None})

    with pytest.raises(ValueError, match=r"FlipDecoder\(flip_prob=0.5\) has no epoch: use it in a JiTLoader"):
        make(FlipDecoder())
    make(FlipDecoder(flip_prob=0.0))  # no epoch needed
    make(FlipDecoder(epoch_cell=EpochCell()))


@pytest.mark.parametrize(("option", "value", "error"), [
    ("flip_prob", "0.5", TypeError), ("flip_prob", True, TypeError), ("flip_prob", 1.5, ValueError),
    ("seed", "1", TypeError), ("seed", 2**63, ValueError), ("seed", -1, ValueError),
    ("chw", 1, TypeError), ("epoch_cell", 3, TypeError), ("jpeg_decode", "exact", ValueError),
])
def test_bad_options_are_one_line_errors_at_construction(option: str, value: object, error: type) -> None:
    for make in (FlipDecoder, SeededHorizontalFlip):
        if option in ("chw", "jpeg_decode") and make is SeededHorizontalFlip:
            continue
        with pytest.raises(error, match=rf"^{option} must be [^\n]*, got {value!r}"):
            make(**{option: value})


def test_jpg_mode_is_ffcvs() -> None:
    assert IMAGE_MODES["jpg"] == JPG_MODE


@pytest.mark.parametrize("workers", [1, 2])
def test_rss_stays_flat_over_50_loaders(raw_beton: Path, workers: int) -> None:
    """50 loaders built, used and dropped (Lightning reloading each epoch): each used to keep ~15-24 MiB."""
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "loader_rss.py"), str(raw_beton),
                           "--loaders", "50", "--workers", str(workers)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    assert rss["last_mib"] - rss["first_mib"] < 50, rss
