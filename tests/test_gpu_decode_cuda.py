"""GPU decode with nvImageCodec: close to the CPU decode, the CPU path's order/labels/flips, safe slot reuse.

Runs only where CUDA and nvImageCodec are present (``make gpu-check``, tests/helpers/gpu_session.sh);
the CPU side of the same path is tested exactly in tests/test_gpu_decode.py. The stress test is
tests/test_gpu.py's: each step queues ``torch.cuda._sleep`` so the GPU runs far behind, and every
checksum is compared at the end with a pass that did not sleep.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import jit_ffcv.epoch
from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.gpu_decode import CpuDecoder, NvImageCodecDecoder
from jit_ffcv.gpu_gather import stored_payloads
from jit_ffcv.synthetic import SyntheticFolder
from tests.helpers.data import SMALL
from tests.helpers.gpu_decode import GatherDataModule, datamodule, replicated

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run `make gpu-check` there"),
    pytest.mark.skipif(importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.nvimgcodec")
                       is None, reason='needs nvImageCodec: pip install "jit-ffcv[gpu]"'),
]

SLEEP_CYCLES = 20_000_000  # ~10 ms of GPU time per step: far slower than the loader on these tiny images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of two uint8 tensors, in dB (inf if equal)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


class NvDataModule(GatherDataModule):
    decoder_factory = NvImageCodecDecoder


@pytest.fixture(scope="module")
def big_jpg(jpg_beton: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return replicated(jpg_beton, tmp_path_factory)


def reads_input_late(decoder: NvImageCodecDecoder, payloads: list[np.ndarray], height: int, width: int) -> bool:
    """True if ``decoder`` still reads its input bytes after ``decode()`` returned (GPU held back meanwhile).

    Only then can a slot rewritten too early corrupt a batch, so only then must the
    negative control of the stress test see corruption.
    """
    reference = decoder.decode([np.array(p) for p in payloads], height, width).clone()
    torch.cuda.synchronize()
    inputs = [np.array(p) for p in payloads]
    torch.cuda._sleep(SLEEP_CYCLES * 20)
    try:
        out = decoder.decode(inputs, height, width)
        for buffer in inputs:
            buffer[:] = 0  # what a rewritten slot would hold, as far as the decoder can tell
        torch.cuda.synchronize()
    except RuntimeError:
        return True
    return not torch.equal(out, reference)


@pytest.mark.parametrize("backend", ["hardware", "cuda"])
def test_decode_is_close_to_the_cpu_decode(jpg_beton: Path, backend: str) -> None:
    payloads = stored_payloads(jpg_beton)
    cpu = CpuDecoder().decode(payloads, SMALL, SMALL)
    gpu = NvImageCodecDecoder("cuda", backend=backend).decode(payloads, SMALL, SMALL).cpu()
    assert gpu.shape == cpu.shape and gpu.dtype == torch.uint8
    bias = (gpu.double() - cpu.double()).mean(dim=(0, 1, 2))
    assert bias.abs().max().item() <= 0.5, f"per-channel mean bias {bias.tolist()}"
    assert psnr(gpu, cpu) >= 35


def test_gpu_path_has_the_cpu_paths_order_labels_and_flips(synthetic: SyntheticFolder, big_jpg: Path) -> None:
    cpu = datamodule(JiTDataModule, synthetic, big_jpg).train_dataloader()
    gpu = datamodule(NvDataModule, synthetic, big_jpg, device="cuda").train_dataloader()
    for epoch in range(2):
        cpu.set_epoch(epoch)
        gpu.set_epoch(epoch)
        assert list(gpu.sampler) == list(cpu.sampler)
        pairs = [((xc, yc), (xg, yg)) for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True)]
        for (xc, yc), (xg, yg) in pairs:  # a wrong flip would drop PSNR far below the bar
            assert xg.device.type == "cuda" and xg.is_contiguous() and xg.shape == xc.shape
            assert torch.equal(yg.cpu(), yc)
            assert psnr(xg.cpu(), xc) >= 35


def checksum_run(loader, delay: bool) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Per-image position-weighted checksums of 2 epochs, computed on the GPU (behind a sleep if ``delay``)."""
    runs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        weights, sums = None, []
        for x, _ in loader:
            if weights is None:
                weights = (torch.arange(x[0].numel(), device=x.device) % 251 + 1).view(x.shape[1:])
            if delay:
                torch.cuda._sleep(SLEEP_CYCLES)  # the GPU runs behind from here on
            sums.append((x.to(torch.int64) * weights).flatten(1).sum(1))
        torch.cuda.synchronize()
        runs.append(torch.cat(sums).cpu().numpy())
    return runs


def corrupted(synthetic: SyntheticFolder, beton: Path) -> int:
    """Images whose delayed checksum differs from the undelayed one."""
    reference = checksum_run(datamodule(NvDataModule, synthetic, beton, device="cuda").train_dataloader(), False)
    delayed = checksum_run(datamodule(NvDataModule, synthetic, beton, device="cuda").train_dataloader(), True)
    return sum(int((a != b).sum()) for a, b in zip(reference, delayed, strict=True))


def test_every_image_decoded_behind_a_delayed_gpu_is_exact(synthetic: SyntheticFolder, big_jpg: Path) -> None:
    assert corrupted(synthetic, big_jpg) == 0


def test_without_the_release_events_the_delayed_decode_reads_rewritten_bytes(
    synthetic: SyntheticFolder, big_jpg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stress test's teeth on this path, if the decoder reads its input after decode() returns."""
    if not reads_input_late(NvImageCodecDecoder("cuda"), stored_payloads(big_jpg)[:8], SMALL, SMALL):
        pytest.skip("nvImageCodec reads its input bytes before decode() returns: a slot can be rewritten "
                    "right after, so there is no window for corruption to show")
    monkeypatch.setattr(jit_ffcv.epoch, "release_event", lambda: None)
    assert corrupted(synthetic, big_jpg) > 0

