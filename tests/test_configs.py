"""The shipped configs construct a JiTDataModule with exactly the options they name."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from jit_ffcv import JiTDataModule

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds_the_datamodule(path: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(path.read_text())["data"]
    assert data["class_path"] == "jit_ffcv.JiTDataModule"
    args = data["init_args"]
    assert set(args) <= set(inspect.signature(JiTDataModule.__init__).parameters)
    dm = JiTDataModule(**{**args, "data_path": str(tmp_path)})
    assert dm.img_size == int(path.stem.split("_")[-1]) and dm.output == "float" and dm.batch_size == 128
    assert dm.beton_path("train") == tmp_path / "ffcv" / f"train_{dm.img_size}_jpg90.beton"


def test_there_are_configs() -> None:
    assert [p.name for p in CONFIGS] == ["imagenet_256.yaml", "imagenet_512.yaml"]
