"""GPU decode path on the CPU: gathered bytes + a stand-in decoder give the CPU path's batches exactly.

``GatherDataModule`` is ``JiTDataModule(decode_device="cuda")`` (image pipeline = GatherJpegBytes, no image
tensor ops, the loader wrapped in GpuDecodeLoader) with :class:`CpuDecoder` in place of nvImageCodec, so every
pixel can be compared exactly.
The tests that need nvImageCodec and CUDA are in tests/test_gpu_decode_cuda.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import jit_ffcv.gpu_decode as gpu_decode
from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.gpu_decode import CpuDecoder, GpuDecodeLoader, NvImageCodecDecoder, finish
from jit_ffcv.gpu_gather import GatherJpegBytes, max_payload_bytes
from jit_ffcv.synthetic import SyntheticFolder
from tests.helpers.data import SMALL
from tests.helpers.gpu_decode import FLIP, SEED, GatherDataModule, datamodule, replicated


@pytest.fixture(scope="module")
def big_jpg(jpg_beton: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return replicated(jpg_beton, tmp_path_factory)


def copy(x: Any) -> np.ndarray:
    """A numpy copy of a batch tensor (taken while the batch is valid)."""
    return x.numpy().copy() if isinstance(x, torch.Tensor) else np.array(x)


def epoch_batches(loader: Any, epoch: int) -> tuple[list[int], list[tuple[np.ndarray, np.ndarray]]]:
    """The epoch's order and its batches as numpy copies (taken while each batch is valid)."""
    loader.set_epoch(epoch)
    order = list(loader.sampler)
    return order, [(copy(x), copy(y)) for x, y in loader]


def assert_same(cpu: list[tuple[np.ndarray, np.ndarray]], gpu: list[tuple[np.ndarray, np.ndarray]]) -> None:
    assert len(cpu) == len(gpu) > 2  # more batches than a consumer may hold
    for b, ((xc, yc), (xg, yg)) in enumerate(zip(cpu, gpu, strict=True)):
        assert xg.shape == xc.shape and xg.dtype == xc.dtype, b
        assert xg.flags.c_contiguous
        assert np.array_equal(yg, yc), f"labels differ in batch {b}"
        assert np.array_equal(xg, xc), f"pixels differ in batch {b}"


@pytest.mark.parametrize(("replicas", "rank"), [(1, 0), (2, 0), (2, 1)])
def test_every_batch_equals_the_cpu_path(synthetic: SyntheticFolder, big_jpg: Path, replicas: int,
                                         rank: int) -> None:
    cpu = datamodule(JiTDataModule, synthetic, big_jpg, num_replicas=replicas, rank=rank).train_dataloader()
    gpu = datamodule(GatherDataModule, synthetic, big_jpg, num_replicas=replicas, rank=rank).train_dataloader()
    flipped = 0
    for epoch in range(2):
        order_cpu, batches_cpu = epoch_batches(cpu, epoch)
        order_gpu, batches_gpu = epoch_batches(gpu, epoch)
        assert order_gpu == order_cpu
        assert_same(batches_cpu, batches_gpu)
        flipped += int(gpu_flips(order_gpu, epoch).sum())
    assert flipped > 0  # the flips were exercised, not only the identity


def gpu_flips(order: list[int], epoch: int) -> np.ndarray:
    from jit_ffcv.ops import flip_mask

    return flip_mask(SEED, epoch, np.asarray(order), FLIP)


def test_float_output_equals_the_cpu_path(synthetic: SyntheticFolder, big_jpg: Path) -> None:
    cpu = datamodule(JiTDataModule, synthetic, big_jpg, output="float").train_dataloader()
    gpu = datamodule(GatherDataModule, synthetic, big_jpg, output="float").train_dataloader()
    _, batches_cpu = epoch_batches(cpu, 1)
    _, batches_gpu = epoch_batches(gpu, 1)
    assert batches_gpu[0][0].dtype == np.float32
    assert_same(batches_cpu, batches_gpu)


def test_resume_mid_epoch_equals_the_cpu_path(synthetic: SyntheticFolder, big_jpg: Path) -> None:
    """Stop after 2 batches of epoch 1, resume in a fresh loader: the rest equals the CPU path's rest."""
    rests = []
    for cls in (JiTDataModule, GatherDataModule):
        first = datamodule(cls, synthetic, big_jpg, num_replicas=2, rank=1).train_dataloader()
        first.set_epoch(1)
        iterator = iter(first)
        for _ in range(2):
            next(iterator)
        state = first.state_dict()
        del iterator
        resumed = datamodule(cls, synthetic, big_jpg, num_replicas=2, rank=1).train_dataloader()
        resumed.load_state_dict(state)
        order = list(resumed.sampler)
        rests.append((order, [(copy(x), copy(y)) for x, y in resumed]))
    (order_cpu, cpu), (order_gpu, gpu) = rests
    assert order_gpu == order_cpu and len(order_cpu) > 0
    assert_same(cpu, gpu)


# ------------------------------------------------------------------ negative controls
def test_a_wrong_flip_bit_is_caught(synthetic: SyntheticFolder, big_jpg: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def one_wrong(hwc: torch.Tensor, flips: torch.Tensor, output: str = "uint8") -> torch.Tensor:
        flips = flips.clone()
        flips[0] = ~flips[0]
        return finish(hwc, flips, output)

    cpu = datamodule(JiTDataModule, synthetic, big_jpg).train_dataloader()
    gpu = datamodule(GatherDataModule, synthetic, big_jpg).train_dataloader()
    monkeypatch.setattr(gpu_decode, "finish", one_wrong)
    _, batches_cpu = epoch_batches(cpu, 0)
    _, batches_gpu = epoch_batches(gpu, 0)
    with pytest.raises(AssertionError, match="pixels differ in batch 0"):
        assert_same(batches_cpu, batches_gpu)


def test_bytes_decoded_after_their_slot_is_rewritten_are_caught(synthetic: SyntheticFolder,
                                                                 big_jpg: Path) -> None:
    """Holding gathered batches past the second batch after them (slots rewritten) gives wrong pixels."""
    cpu = datamodule(JiTDataModule, synthetic, big_jpg).train_dataloader()
    gpu = datamodule(GatherDataModule, synthetic, big_jpg).train_dataloader()
    _, batches_cpu = epoch_batches(cpu, 0)
    gpu.set_epoch(0)
    held = list(gpu.loader)  # every gathered batch kept, none decoded yet: the slots have been reused
    late = [(copy(gpu.decode_batch(np.asarray(p), np.asarray(i))), copy(y)) for (p, i), y in held]
    with pytest.raises(AssertionError, match="differ in batch"):
        assert_same(batches_cpu, late)


# ------------------------------------------------------------------ errors
def test_a_raw_beton_is_refused_in_one_line(synthetic: SyntheticFolder, raw_beton: Path) -> None:
    dm = datamodule(GatherDataModule, synthetic, raw_beton, mode="raw")
    with pytest.raises(ValueError, match=r"GPU decode needs a jpg beton \(mode='jpg'\)"):
        next(iter(dm.train_dataloader()))


def test_missing_nvimgcodec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "nvidia", None)
    with pytest.raises(ImportError, match=r'pip install "jit-ffcv\[gpu\]"'):
        NvImageCodecDecoder("cuda")


def test_no_cuda_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_decode, "load_nvimgcodec", lambda: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="GPU decode needs a CUDA device"):
        NvImageCodecDecoder("cuda")


def test_a_bad_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        NvImageCodecDecoder("cuda", backend="nvjpg")


def test_max_payload_bytes_is_the_largest_stored_jpeg(jpg_beton: Path) -> None:
    from writers.ffcv_api import Reader

    table = Reader(str(jpg_beton)).alloc_table
    assert max_payload_bytes(jpg_beton) == int(table["size"].max()) > 0
    with pytest.raises(ValueError, match="has no field 'pixels'"):
        max_payload_bytes(jpg_beton, field="pixels")


def test_a_row_too_narrow_for_a_jpeg_is_refused() -> None:
    loader = GpuDecodeLoader(None, CpuDecoder(), image_size=(SMALL, SMALL))
    info = np.array([[10, 0]], dtype=np.int64)
    with pytest.raises(ValueError, match=r"does not fit GatherJpegBytes\(max_bytes=4\)"):
        loader.decode_batch(np.zeros((1, 4), dtype=np.uint8), info)


def test_stored_payloads_are_the_gathered_bytes(jpg_beton: Path) -> None:
    """The memory-mapped payloads (fidelity measurements) are byte for byte what GatherJpegBytes gathers."""
    from jit_ffcv.gpu_gather import FLIP, LENGTH, stored_payloads
    from jit_ffcv.loader import JiTLoader
    from jit_ffcv.traversal import SequentialOrder
    from writers.ffcv_api import IntDecoder

    payloads = stored_payloads(jpg_beton)
    loader = JiTLoader(str(jpg_beton), batch_size=len(payloads), num_workers=1, order=SequentialOrder(),
                       pipelines={"image": [GatherJpegBytes(max_payload_bytes(jpg_beton), flip_prob=0.0)],
                                  "label": [IntDecoder()], "index": None, "checksum": None}, pin_memory=False)
    ((gathered, info), _), = list(loader)
    assert np.array_equal(info[:, FLIP], np.zeros(len(payloads)))
    for i, payload in enumerate(payloads):
        assert info[i, LENGTH] == payload.size
        assert np.array_equal(gathered[i, : payload.size], payload)


def test_nvimgcodec_decoder_asks_for_the_backends_and_upsampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backend names map to nvImageCodec's kinds (engines first, CUDA fallback) and chroma is interpolated."""
    from types import SimpleNamespace

    made: dict[str, Any] = {}
    fake = SimpleNamespace(
        BackendKind=SimpleNamespace(HW_GPU_ONLY="hw", GPU_ONLY="gpu"), Backend=lambda kind: kind,
        ColorSpec=SimpleNamespace(SRGB="srgb"), SampleFormat=SimpleNamespace(I_RGB="rgb"),
        DecodeParams=lambda **kw: kw, Decoder=lambda **kw: made.update(kw))
    monkeypatch.setattr(gpu_decode, "load_nvimgcodec", lambda: fake)
    monkeypatch.setattr(gpu_decode, "check_cuda", lambda device: None)
    expected = {"auto": ["hw", "gpu"], "hardware": ["hw"], "cuda": ["gpu"]}
    for backend, kinds in expected.items():
        decoder = NvImageCodecDecoder("cuda:0", backend=backend)
        assert made["backends"] == kinds and made["options"] == ":fancy_upsampling=1" and made["device_id"] == 0
        assert decoder.params == {"apply_exif_orientation": False, "color_spec": "srgb", "allow_any_depth": False,
                                   "sample_format": "rgb"}


def test_decode_device_cuda_checks_mode_package_and_cuda_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"decode_device='cuda' decodes stored JPEGs: it needs mode='jpg', got mode="):
        JiTDataModule(str(tmp_path), mode="raw", decode_device="cuda")
    with pytest.raises(ValueError, match="decode_device must be one of"):
        JiTDataModule(str(tmp_path), decode_device="gpu")
    with pytest.raises(ValueError, match="gpu_backend must be one of"):
        JiTDataModule(str(tmp_path), gpu_backend="nvjpg")
    try:
        import nvidia.nvimgcodec  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r'pip install "jit-ffcv\[gpu\]"'):
            JiTDataModule(str(tmp_path), decode_device="cuda")


def test_gathering_needs_the_loaders_epoch(jpg_beton: Path) -> None:
    """Built without a cell it flips per the loader's epoch inside a JiTLoader, and says so in a bare FFCV Loader.

    Unfixed, it made its own cell: in a bare Loader every epoch flipped as epoch 0, with no error.
    """
    from jit_ffcv.gpu_gather import FLIP as FLIP_COLUMN
    from jit_ffcv.loader import JiTLoader
    from jit_ffcv.ops import flip_mask
    from jit_ffcv.traversal import SequentialOrder
    from writers.ffcv_api import IntDecoder, Loader, OrderOption

    width = max_payload_bytes(jpg_beton)
    pipelines = {"label": [IntDecoder()], "index": None, "checksum": None}
    with pytest.raises(ValueError, match=r"GatherJpegBytes\(flip_prob=0.5\) has no epoch: use it in a JiTLoader"):
        Loader(str(jpg_beton), batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL,
               pipelines={"image": [GatherJpegBytes(width, seed=SEED)], **pipelines})
    op = GatherJpegBytes(width, seed=SEED)
    loader = JiTLoader(str(jpg_beton), batch_size=8, num_workers=1, order=SequentialOrder(), pin_memory=False,
                       pipelines={"image": [op], **pipelines})
    assert op.epoch_cell is loader.epoch_cell
    for epoch in (0, 3):
        loader.set_epoch(epoch)
        flips = np.concatenate([np.array(info[:, FLIP_COLUMN]) for (_, info), _ in loader])
        assert flips.tolist() == flip_mask(SEED, epoch, np.arange(len(flips)), 0.5).astype(int).tolist()
