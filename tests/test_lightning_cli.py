"""The LightningCLI entry (examples/lightning/train.py) runs the shipped configs; its seed and size links."""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from jit_ffcv.synthetic import SyntheticFolder

pytestmark = pytest.mark.slow  # LightningCLI fits: `make test` runs it, `make check` does not

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "lightning" / "train.py"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
       "--trainer.precision", "32-true"]
N_TRAIN, BATCH = 20, 4  # the synthetic folder's readable train images; 5 batches per epoch (drop_last)
STEPS = 7  # epoch 0: steps 0-4, then validation, epoch 1: steps 5-6


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lightning_cli_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example()


@pytest.fixture(autouse=True)
def script_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process CLIs get their args as ``args=``; pytest's own argv would look like extra arguments."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])


@pytest.fixture
def isolated_seed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """seed_everything sets PL_GLOBAL_SEED and the global RNGs: give them back after the test."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


def build(example: ModuleType, tmp_path: Path, *args: str) -> Any:
    """The CLI with everything instantiated (a CPU trainer) but nothing run."""
    return example.JiTCLI(example.TinyJiTModule, example.JiTDataModule, seed_everything_default=0, run=False,
                          args=["--config", str(CONFIGS[0]), *CPU, "--trainer.default_root_dir", str(tmp_path), *args])


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested dict (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


# ------------------------------------------------------------------ every config key is an option
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_key_is_accepted(example: ModuleType, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        example.main(["fit", "--config", str(path), "--print_config"])
    assert done.value.code in (0, None)
    printed = flatten(yaml.safe_load(capsys.readouterr().out))
    given = flatten(yaml.safe_load(path.read_text()))
    callbacks = given.pop("trainer.callbacks")
    assert {key: printed.get(key, "<missing>") for key in given} == given
    assert [(c["class_path"], {k: c["init_args"][k] for k in callbacks[0]["init_args"]})
            for c in printed["trainer.callbacks"]] == [(c["class_path"], c["init_args"]) for c in callbacks]


def test_an_unknown_config_key_is_refused(example: ModuleType, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(CONFIGS[0].read_text())
    config["data"]["num_worker"] = 4  # a typo must not pass silently
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as done:
        example.main(["fit", "--config", str(path), "--print_config"])
    assert done.value.code == 2 and "num_worker" in capsys.readouterr().err


# ------------------------------------------------------------------ seed rule and size link
@pytest.mark.parametrize(("args", "env_seed", "data_seed", "run_seed"), [
    ((), None, 0, 0),  # the configs' seed_everything: 0
    (("--seed_everything", "5"), None, 5, 5),  # data.seed follows seed_everything
    (("--seed_everything", "5", "--data.seed", "3"), None, 3, 5),  # an explicit data.seed wins
    (("--seed_everything", "true"), None, 0, 0),  # Lightning resolves true to $PL_GLOBAL_SEED, else 0
    (("--seed_everything", "true"), "11", 11, 11),
    (("--seed_everything", "false"), None, 0, False),  # Lightning seeds nothing; the DataModule's default seed
])
def test_data_seed_follows_seed_everything(example: ModuleType, tmp_path: Path, isolated_seed: None,
                                           monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...],
                                           env_seed: str | None, data_seed: int, run_seed: int | bool) -> None:
    if env_seed is not None:
        monkeypatch.setenv("PL_GLOBAL_SEED", env_seed)
    cli = build(example, tmp_path, *args)
    assert cli.datamodule.seed == data_seed
    assert (type(cli.config.seed_everything), cli.config.seed_everything) == (type(run_seed), run_seed)


def test_model_img_size_is_the_data_img_size(example: ModuleType, tmp_path: Path, isolated_seed: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cli = build(example, tmp_path, "--data.img_size", "64", "--model.patch_size", "8")
    assert cli.model.hparams.img_size == 64 and cli.datamodule.img_size == 64
    assert tuple(cli.model.net.pos.shape) == (1, (64 // 8) ** 2, 64)
    with pytest.raises(SystemExit) as done:
        build(example, tmp_path, "--model.img_size", "64")
    assert done.value.code == 2 and "model.img_size" in capsys.readouterr().err


# ------------------------------------------------------------------ a real fit, in a subprocess
def test_fit_runs_the_config_for_exact_steps(synthetic: SyntheticFolder, tmp_path: Path) -> None:
    logs, betons = tmp_path / "logs", tmp_path / "ffcv"
    cmd = [sys.executable, str(SCRIPT), "fit", "--config", str(CONFIGS[0]), "--seed_everything", "7", *CPU,
           "--trainer.max_steps", str(STEPS), "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
           "--trainer.log_every_n_steps", "1", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
           "--trainer.logger.save_dir", str(logs), "--trainer.enable_progress_bar", "false",
           "--data.data_path", str(synthetic.root), "--data.beton_dir", str(betons), "--data.img_size", "32",
           "--data.batch_size", str(BATCH), "--data.num_workers", "1", "--data.write_workers", "0",
           "--model.patch_size", "8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PL_GLOBAL_SEED", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"`Trainer.fit` stopped: `max_steps={STEPS}` reached." in proc.stdout + proc.stderr

    run = logs / "lightning_logs" / "version_0"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train = [(int(r["epoch"]), int(r["step"])) for r in rows if r["train_loss"]]
    per_epoch = N_TRAIN // BATCH
    assert train == [(step // per_epoch, step) for step in range(STEPS)]
    assert [(int(r["epoch"]), int(r["step"])) for r in rows if r["val_loss"]] == [(0, per_epoch - 1)]

    ckpt = torch.load(tmp_path / "checkpoints" / "imagenet_256" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    assert ckpt["hyper_parameters"]["img_size"] == 32  # linked from data.img_size
    data = ckpt["datamodule_hyper_parameters"]
    assert (data["seed"], data["img_size"], data["output"], data["batch_size"]) == (7, 32, "float", BATCH)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["seed_everything"], saved["data"]["seed"]) == (7, 7)  # the saved config reruns the same seeds
    assert sorted(p.name for p in betons.glob("*.beton")) == ["train_32_jpg90.beton", "val_32_jpg90.beton"]
