"""The shipped configs: complete LightningCLI configs for JiT-scale runs whose data section builds a JiTDataModule."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from jit_ffcv import JiTDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds_the_datamodule(path: Path, tmp_path: Path) -> None:
    args = yaml.safe_load(path.read_text())["data"]
    assert set(args) <= set(inspect.signature(JiTDataModule.__init__).parameters)
    assert "seed" not in args  # the data seed follows seed_everything (README, LightningCLI)
    dm = JiTDataModule(**{**args, "data_path": str(tmp_path)})
    assert dm.img_size == int(path.stem.split("_")[-1]) and dm.output == "float" and dm.batch_size == 128
    assert dm.beton_path("train") == tmp_path / "ffcv" / f"train_{dm.img_size}_jpg90.beton"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_is_a_jit_scale_run(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert config["seed_everything"] == 0
    trainer = config["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["strategy"], trainer["precision"]) == (
        "gpu", 8, "ddp", "bf16-mixed")
    assert config["data"]["img_size"] % config["model"]["patch_size"] == 0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_comments_name_scripts_that_exist(path: Path) -> None:
    scripts = re.findall(r"python (\S+\.py)", path.read_text())
    assert scripts == ["examples/lightning/train.py"]
    assert all((ROOT / script).is_file() for script in scripts)


def test_there_are_configs() -> None:
    assert [p.name for p in CONFIGS] == ["imagenet_256.yaml", "imagenet_512.yaml"]
