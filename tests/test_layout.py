"""Contiguous NCHW batches: the transpose kernels, FlipDecoder(chw=True), and which path the DataModule takes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.layout import ToCHW, chw_copy, chw_mirror
from jit_ffcv.ops import EpochCell, FlipDecoder, SeededHorizontalFlip, flip_mask, nchw_ops
from tests.helpers.custom_ops import AddOffset, OffsetDataModule, run_epochs
from tests.helpers.data import pillow_images, read_beton

ROOT = Path(__file__).resolve().parents[1]
SEED = 11
N = 20  # valid samples in the synthetic train betons


# --------------------------------------------------------------------------- #
# kernels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (33, 64), (64, 33)])
@pytest.mark.parametrize("flat", [False, True])
def test_kernels_transpose_and_mirror_exactly(shape: tuple[int, int], flat: bool) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    source = image.reshape(-1).copy() if flat else image  # raw payloads are flat bytes, JPEG scratch is HxWx3
    out = np.full((3, *shape), 7, dtype=np.uint8)
    chw_copy(source, out)
    assert np.array_equal(out, image.transpose(2, 0, 1))
    out[:] = 7
    chw_mirror(source, out)
    assert np.array_equal(out, image[:, ::-1].transpose(2, 0, 1))


# --------------------------------------------------------------------------- #
# FlipDecoder(chw=True) in a real FFCV Loader
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("beton", ["raw", "jpg"])
def test_chw_decoder_is_exact_and_follows_the_mask(request: pytest.FixtureRequest, beton: str) -> None:
    path = request.getfixturevalue(f"{beton}_beton")
    reference = pillow_images(path) if beton == "jpg" else read_beton(path)[0]
    labels = read_beton(path)[1]
    assert all(not np.array_equal(img, img[:, ::-1]) for img in reference)  # a flip is always visible
    for workers in (1, 2):
        for prob in (0.0, 0.5, 1.0):
            cell = EpochCell()
            runs = run_epochs(path, [FlipDecoder(flip_prob=prob, seed=SEED, epoch_cell=cell, chw=True)], cell,
                               workers, [0, 1])
            for epoch, (images, got_labels) in runs.items():
                mask = flip_mask(SEED, epoch, np.arange(N), prob)
                assert mask.sum() == N * prob if prob in (0.0, 1.0) else 0 < mask.sum() < N
                expected = reference.copy()
                expected[mask] = expected[mask][:, :, ::-1]
                assert images.shape == (N, 3, *reference.shape[1:3])
                assert np.array_equal(images, expected.transpose(0, 3, 1, 2)), (workers, prob, epoch)
                assert np.array_equal(got_labels, labels)


def test_chw_decoder_declares_scratch_and_output(raw_beton: Path) -> None:
    cell = EpochCell()
    runs = run_epochs(raw_beton, [FlipDecoder(epoch_cell=cell, chw=True)], cell, 1, [0])
    assert runs[0][0].shape == (N, 3, 64, 64)
    with pytest.raises(TypeError, match="chw must be True or False, got 'yes'"):
        FlipDecoder(chw="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# which path: folded decoder for the default pipelines, ToCHW after custom ops
# --------------------------------------------------------------------------- #
def test_nchw_ops_folds_a_lone_decoder_only() -> None:
    decoder = FlipDecoder(flip_prob=0.3, seed=4)
    (folded,) = nchw_ops([decoder])
    assert isinstance(folded, FlipDecoder) and folded.chw and folded is not decoder
    assert (folded.flip_prob, folded.seed, folded.epoch_cell) == (0.3, 4, decoder.epoch_cell)
    assert decoder.chw is False  # the caller's op is left as it was
    custom = AddOffset(1)
    ops = nchw_ops([decoder, custom])
    assert ops[:2] == [decoder, custom] and isinstance(ops[2], ToCHW) and len(ops) == 3 and not decoder.chw
    flip_op = SeededHorizontalFlip(0.5)
    assert [type(op) for op in nchw_ops([decoder, flip_op])] == [FlipDecoder, SeededHorizontalFlip, ToCHW]


def _image_ops(loader) -> list:  # type: ignore[no-untyped-def]
    """The image pipeline of a JiTLoader: decoder, then transforms."""
    spec = loader.pipeline_specs["image"]
    return [spec.decoder, *spec.transforms]


def _datamodule(cls: type, beton: Path, tmp_path: Path, mode: str, **kwargs: object) -> JiTDataModule:
    dm = cls(data_path=str(tmp_path), train_beton=str(beton), img_size=64, batch_size=4, num_workers=2,
             mode=mode, seed=SEED, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("mode", ["raw", "jpg"])
@pytest.mark.parametrize("prob", [0.5, 0.0])
def test_datamodule_default_pipeline_is_folded_and_exact(request: pytest.FixtureRequest, tmp_path: Path,
                                                         mode: str, prob: float) -> None:
    path = request.getfixturevalue(f"{mode}_beton")
    reference = pillow_images(path) if mode == "jpg" else read_beton(path)[0]
    dm = _datamodule(JiTDataModule, path, tmp_path, mode, flip_prob=prob)
    loader = dm.train_dataloader()
    decoder, *rest = _image_ops(loader)
    assert isinstance(decoder, FlipDecoder) and decoder.chw and not any(isinstance(op, ToCHW) for op in rest)
    loader.set_epoch(2)
    order = list(loader.sampler)
    batches = []
    for x, _ in loader:
        assert x.dtype == torch.uint8 and x.is_contiguous() and x.shape[1:] == (3, 64, 64)
        batches.append(x.numpy().copy())
    expected = reference[order].copy()
    flips = flip_mask(SEED, 2, order, prob)
    assert flips.sum() == 0 if prob == 0.0 else 0 < flips.sum() < N
    expected[flips] = expected[flips][:, :, ::-1]
    assert np.array_equal(np.concatenate(batches), expected.transpose(0, 3, 1, 2))


def test_channels_last_keeps_the_hwc_decoder(raw_beton: Path, tmp_path: Path) -> None:
    dm = _datamodule(JiTDataModule, raw_beton, tmp_path, "raw", flip_prob=0.5, channels_last=True)
    loader = dm.train_dataloader()
    decoder, *rest = _image_ops(loader)
    assert isinstance(decoder, FlipDecoder) and not decoder.chw and not any(isinstance(op, ToCHW) for op in rest)
    x, _ = next(iter(loader))
    assert x.shape[1:] == (3, 64, 64) and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@pytest.mark.parametrize("mode", ["raw", "jpg"])
def test_custom_ops_keep_the_hwc_decoder_and_tochw(request: pytest.FixtureRequest, tmp_path: Path, mode: str) -> None:
    path = request.getfixturevalue(f"{mode}_beton")
    reference = pillow_images(path) if mode == "jpg" else read_beton(path)[0]
    dm = _datamodule(OffsetDataModule, path, tmp_path, mode, flip_prob=0.5)
    loader = dm.train_dataloader()
    decoder, offset, to_chw, *_ = _image_ops(loader)
    assert isinstance(decoder, FlipDecoder) and not decoder.chw
    assert isinstance(offset, AddOffset) and isinstance(to_chw, ToCHW)
    loader.set_epoch(1)
    order = list(loader.sampler)
    images = torch.cat([x.clone() for x, _ in loader])
    assert images.is_contiguous()
    expected = reference[order].copy()
    flips = flip_mask(SEED, 1, order, 0.5)
    assert 0 < flips.sum() < N
    expected[flips] = expected[flips][:, :, ::-1]
    expected = (expected.astype(np.int64) + 100) % 256
    assert np.array_equal(images.numpy(), expected.transpose(0, 3, 1, 2))


_AFTER_DIRECT_CALLS = """
import sys, threading, numpy as np, os
from ffcv.fields.decoders import IntDecoder
from ffcv.loader import Loader, OrderOption
from jit_ffcv.layout import chw_copy, chw_mirror
from jit_ffcv.ops import EpochCell, FlipDecoder
threading.excepthook = lambda args: (print(args.exc_value, flush=True), os._exit(3))
image, out = np.zeros((5, 7, 3), np.uint8), np.zeros((3, 5, 7), np.uint8)
chw_copy(image, out); chw_copy(image.reshape(-1).copy(), out); chw_mirror(image, out)  # two writable overloads
loader = Loader(sys.argv[1], batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                pipelines={"image": [FlipDecoder(chw=True, epoch_cell=EpochCell())], "label": [IntDecoder()],
                           "index": None, "checksum": None})
print(sum(len(x) for x, _ in loader))
"""


def test_pipeline_compiles_after_direct_kernel_calls(raw_beton: Path, tmp_path: Path) -> None:
    """Kernels shared with direct calls: FFCV's OS-cache reader used to set ``mutable = False`` on numba's
    shared ``uint8[::1]`` type, so a kernel already compiled for writable arrays failed with a KeyError in
    FFCV's thread on the read-only payload (and the loader hung); writers.ffcv_api replaces that reader."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": str(tmp_path)}  # cold: compiled in the thread
    done = subprocess.run([sys.executable, "-c", _AFTER_DIRECT_CALLS, str(raw_beton)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert (done.returncode, done.stdout) == (0, f"{N}\n"), done.stdout + done.stderr[-2000:]
