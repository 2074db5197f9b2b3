"""The GPU decode path of the DataModule with a swappable decoder, for tests with and without CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.gpu_decode import CpuDecoder
from jit_ffcv.synthetic import SyntheticFolder
from tests.helpers.data import SMALL

SEED, FLIP, BATCH = 5, 0.5, 8


def replicated(beton: Path, tmp_path_factory: pytest.TempPathFactory, times: int = 10) -> Path:
    """``beton`` ``times`` times over: many more batches than the loader's slots."""
    from writers.beton import replicate_beton

    out = tmp_path_factory.mktemp("gpu_decode") / f"train_x{times}.beton"
    replicate_beton(beton, out, times)
    return out


class GatherDataModule(JiTDataModule):
    """The real ``decode_device="cuda"`` path of the DataModule, with the CPU stand-in decoder (no CUDA here)."""

    decoder_factory: Any = CpuDecoder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # decode_device="cpu": no nvImageCodec or CUDA is checked for
        self.hparams.decode_device = "cuda"

    def gpu_decoder(self) -> Any:
        return self.decoder_factory()


def datamodule(cls: type[JiTDataModule], synthetic: SyntheticFolder, beton: Path, **options: Any) -> JiTDataModule:
    """A train-only DataModule on ``beton`` (the GPU path ignores channels_last: NCHW comes from its decode)."""
    options = {"num_workers": 2, "seed": SEED, "flip_prob": FLIP, "device": "cpu", "pin_memory": False,
               "batches_ahead": 2, **options}
    dm = cls(str(synthetic.root), img_size=SMALL, batch_size=BATCH, train_beton=str(beton), **options)
    dm.setup("fit")
    return dm
