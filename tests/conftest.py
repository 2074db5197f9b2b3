"""Shared fixtures: one synthetic ImageFolder and its betons, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from jit_ffcv.synthetic import SyntheticFolder, make_image_folder
from tests.helpers.data import SMALL
from writers.beton import write_split


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticFolder:
    return make_image_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def raw_beton(synthetic: SyntheticFolder) -> Path:
    out = synthetic.root / "ffcv" / f"train_{SMALL}_raw.beton"
    write_split(synthetic.root, "train", out, img_size=SMALL, mode="raw", num_workers=0, progress=False)
    return out


@pytest.fixture(scope="session")
def jpg_beton(synthetic: SyntheticFolder) -> Path:
    out = synthetic.root / "ffcv" / f"train_{SMALL}_jpg90.beton"
    write_split(synthetic.root, "train", out, img_size=SMALL, mode="jpg", quality=90, num_workers=2, progress=False)
    return out
