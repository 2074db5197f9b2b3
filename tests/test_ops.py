"""Seeded flip ops: pure (seed, epoch, index) decisions, exact pixels in real FFCV loaders, custom ops."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from ffcv.pipeline.operation import Operation

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.ops import EpochCell, FlipDecoder, SeededHorizontalFlip, ToUnitRange, flip_decision, flip_mask, read_int64
from tests.helpers.custom_ops import LegacyOffsetDataModule, OffsetDataModule, run_epochs
from tests.helpers.data import pillow_images, read_beton

SEED = 11
N = 20  # valid samples in the synthetic train betons


@numba.njit(parallel=True)
def _mask_prange(seed: int, epoch: int, indices: np.ndarray, prob: float) -> np.ndarray:
    """flip_decision evaluated from numba worker threads (prange), for the thread-count test."""
    out = np.empty(len(indices), dtype=np.bool_)
    for i in numba.prange(len(indices)):
        out[i] = flip_decision(seed, epoch, indices[i], prob)
    return out


# --------------------------------------------------------------------------- #
# the pure decision
# --------------------------------------------------------------------------- #
def test_decision_is_a_pure_function_of_seed_epoch_index() -> None:
    idx = np.arange(5000)
    first = flip_mask(SEED, 3, idx, 0.5)
    assert np.array_equal(first, flip_mask(SEED, 3, idx, 0.5))
    # scalar calls with the index types FFCV passes (uint64 under SEQUENTIAL, int64 under our orders)
    for i in (0, 1, 17, 4999):
        assert flip_decision(SEED, 3, np.uint64(i), 0.5) == flip_decision(SEED, 3, np.int64(i), 0.5) == first[i]
    # the decision of one index does not depend on the batch it is computed in
    assert np.array_equal(flip_mask(SEED, 3, idx[::-1], 0.5), first[::-1])
    assert np.array_equal(flip_mask(SEED, 3, idx[100:200], 0.5), first[100:200])


def test_decision_does_not_depend_on_numba_thread_count() -> None:
    idx = np.arange(20_000, dtype=np.int64)
    expected = flip_mask(SEED, 1, idx, 0.5)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            assert np.array_equal(_mask_prange(SEED, 1, idx, 0.5), expected), threads
            assert np.array_equal(flip_mask(SEED, 1, idx, 0.5), expected), threads
    finally:
        numba.set_num_threads(before)
    assert numba.get_num_threads() == before


def test_epochs_and_seeds_give_different_masks() -> None:
    idx = np.arange(1000)
    e0, e1 = flip_mask(SEED, 0, idx, 0.5), flip_mask(SEED, 1, idx, 0.5)
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, flip_mask(SEED + 1, 0, idx, 0.5))
    # different but not anti-correlated: about half of the decisions agree
    assert 0.45 < np.mean(e0 == e1) < 0.55


@pytest.mark.parametrize("epoch", [0, 1, 7])
def test_extreme_probabilities(epoch: int) -> None:
    idx = np.arange(10_000)
    assert flip_mask(SEED, epoch, idx, 0.0).sum() == 0
    assert flip_mask(SEED, epoch, idx, 1.0).sum() == len(idx)


@pytest.mark.parametrize("prob", [0.5, 0.3])
def test_flip_rate(prob: float) -> None:
    rate = flip_mask(SEED, 0, np.arange(100_000), prob).mean()
    assert abs(rate - prob) <= 0.01, rate


@pytest.mark.parametrize("prob", [-0.1, 1.5])
def test_ops_refuse_bad_probabilities(prob: float) -> None:
    for make in (lambda: FlipDecoder(flip_prob=prob), lambda: SeededHorizontalFlip(prob)):
        with pytest.raises(ValueError, match="flip_prob"):
            make()


def test_epoch_cell_round_trip() -> None:
    cell = EpochCell(4)
    assert cell.get() == 4
    cell.set(9)
    assert cell.get() == 9
    @numba.njit
    def read(address: int) -> int:
        return read_int64(address)

    assert read(cell.address) == 9
    cell.set(123456789012)
    assert read(cell.address) == 123456789012


# --------------------------------------------------------------------------- #
# the ops in a real FFCV Loader
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def plain(raw_beton: Path, jpg_beton: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Unflipped images of both betons, by name: the raw bytes, and Pillow's decode of the stored JPEGs."""
    raw = read_beton(raw_beton)
    return {"raw": raw, "jpg": (pillow_images(jpg_beton), read_beton(jpg_beton)[1])}


def _flip_pipeline(kind: str, prob: float, cell: EpochCell) -> list[Operation]:
    if kind == "decoder":
        return [FlipDecoder(flip_prob=prob, seed=SEED, epoch_cell=cell)]
    return [FlipDecoder(flip_prob=0.0), SeededHorizontalFlip(prob, seed=SEED, epoch_cell=cell)]


@pytest.mark.parametrize("beton", ["raw", "jpg"])
@pytest.mark.parametrize("kind", ["decoder", "op"])
def test_flip_in_loader_is_exact_and_follows_the_mask(
    request: pytest.FixtureRequest, plain: dict, beton: str, kind: str
) -> None:
    path = request.getfixturevalue(f"{beton}_beton")
    ref_images, ref_labels = plain[beton]
    assert len(ref_images) == N
    # no image is its own mirror, so "equals ref" and "equals mirror" are exclusive
    assert all(not np.array_equal(img, img[:, ::-1]) for img in ref_images)
    masks = {e: flip_mask(SEED, e, np.arange(N), 0.5) for e in (0, 1)}
    assert all(0 < m.sum() < N for m in masks.values()) and not np.array_equal(masks[0], masks[1])

    results = {}
    for workers in (1, 2):
        cell = EpochCell()
        results[workers] = run_epochs(path, _flip_pipeline(kind, 0.5, cell), cell, workers, [0, 1])
        for epoch, (images, labels) in results[workers].items():
            assert np.array_equal(labels, ref_labels)
            for i in range(N):
                expected = ref_images[i][:, ::-1] if masks[epoch][i] else ref_images[i]
                np.testing.assert_array_equal(images[i], expected, err_msg=f"{workers=} {epoch=} {i=}")
    for epoch in (0, 1):
        assert np.array_equal(results[1][epoch][0], results[2][epoch][0])


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_flip_decoder_extremes_in_loader(raw_beton: Path, plain: dict, prob: float) -> None:
    cell = EpochCell()
    images, _ = run_epochs(raw_beton, _flip_pipeline("decoder", prob, cell), cell, 1, [5])[5]
    expected = plain["raw"][0][:, :, ::-1] if prob == 1.0 else plain["raw"][0]
    assert np.array_equal(images, expected)


# --------------------------------------------------------------------------- #
# documented example: a user-written numba op plugged into the DataModule
# --------------------------------------------------------------------------- #
def _epoch_batches(loader, epoch: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """(sampler order, images, labels) of one epoch of a JiTLoader, copied out of FFCV's buffers."""
    loader.set_epoch(epoch)
    order = list(loader.sampler)
    batches = [(x.clone(), y.clone()) for x, y in loader]
    return order, torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("cls", [OffsetDataModule, LegacyOffsetDataModule])
def test_custom_op_in_datamodule(tmp_path: Path, raw_beton: Path, cls: type[JiTDataModule]) -> None:
    ref_images, ref_labels = read_beton(raw_beton)
    # data_path without val/ and an explicit train beton: nothing to write
    dm = cls(data_path=str(tmp_path), train_beton=str(raw_beton), img_size=64, batch_size=4,
                          num_workers=1, mode="raw", seed=SEED, flip_prob=0.5)
    dm.setup("fit")
    order, images, labels = _epoch_batches(dm.train_dataloader(), 1)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (N, 3, 64, 64)
    expected = ref_images[order]
    flips = flip_mask(SEED, 1, order, 0.5)
    assert 0 < flips.sum() < N
    expected[flips] = expected[flips][:, :, ::-1]
    expected = (expected.astype(np.int64) + 100) % 256  # the offset wraps, as uint8 does
    assert np.array_equal(images.numpy(), expected.transpose(0, 3, 1, 2))
    assert labels.tolist() == ref_labels[order].tolist()


# --------------------------------------------------------------------------- #
# ToUnitRange
# --------------------------------------------------------------------------- #
def test_float_output_is_exactly_unit_range(tmp_path: Path, raw_beton: Path) -> None:
    common = dict(data_path=str(tmp_path), train_beton=str(raw_beton), img_size=64, batch_size=4,
                  num_workers=1, mode="raw", seed=SEED, flip_prob=0.5)
    runs = {}
    for output in ("uint8", "float"):
        dm = JiTDataModule(output=output, **common)
        dm.setup("fit")
        runs[output] = _epoch_batches(dm.train_dataloader(), 0)
    (order_u, u8, labels_u), (order_f, flt, labels_f) = runs["uint8"], runs["float"]
    assert order_u == order_f and torch.equal(labels_u, labels_f)
    assert flt.dtype == torch.float32 and flt.device.type == "cpu" and flt.shape == u8.shape
    assert torch.equal(flt, u8.float() / 255 * 2 - 1)


def test_to_unit_range_on_every_byte_value() -> None:
    inp = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(2, 3, 1, 1)
    dst = torch.full((4, 3, 16, 16), 7.0)  # FFCV's buffer holds a full batch; the op uses the first rows
    out = ToUnitRange().generate_code()(inp, dst)
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 3, 16, 16)
    assert torch.equal(out, inp.float() / 255 * 2 - 1)
    assert out.flatten()[0].item() == -1.0 and out.flatten()[255].item() == 1.0
    assert torch.equal(dst[2:], torch.full((2, 3, 16, 16), 7.0))
