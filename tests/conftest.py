"""Shared fixtures: one synthetic ImageFolder and its betons, written once per session."""

from __future__ import annotations

import signal
from collections.abc import Iterator
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


@pytest.fixture(autouse=True)
def signal_handlers_kept() -> Iterator[None]:
    """No test may leave SIGINT/SIGTERM handled differently (pytest-xdist runs many tests in one process).

    The writer keeps a signal its caller ignores ignored, so a SIGINT left at SIG_IGN by one test would make a
    later signal test pass or fail by scheduling. The handlers are restored, and the test that changed them fails.
    """
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    changed = {signum: handler for signum, handler in before.items() if signal.getsignal(signum) != handler}
    for signum, handler in changed.items():
        signal.signal(signum, handler)
    assert not changed, f"the test left {[signal.Signals(s).name for s in changed]} handled differently"
