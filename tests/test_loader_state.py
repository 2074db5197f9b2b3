"""A loader state belongs to one beton and one position: refusals of foreign, running and corrupt states."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jit_ffcv.loader import JiTLoader
from jit_ffcv.resume import ResumeTracker
from jit_ffcv.synthetic import make_image_folder
from jit_ffcv.traversal import QuasiRandomOrder, RandomOrder
from writers.beton import write_split
from writers.ffcv_api import IntDecoder
from writers.metadata import sidecar_path

B, SEED = 2, 3


@pytest.fixture(scope="module")
def betons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 30-image split written three times: shuffle seed 0, a copy of it elsewhere, shuffle seed 1."""
    root = tmp_path_factory.mktemp("state_data")
    make_image_folder(root, num_classes=3, per_class=10, broken=False, val=False)
    paths = {name: root / name / "train.beton" for name in ("seed0", "copy", "seed1")}
    for name in ("seed0", "seed1"):
        write_split(root, "train", paths[name], img_size=32, mode="raw", num_workers=0, progress=False,
                    shuffle_seed=int(name[-1]))
    paths["copy"].parent.mkdir()
    shutil.copy(paths["seed0"], paths["copy"])
    shutil.copy(sidecar_path(paths["seed0"]), sidecar_path(paths["copy"]))
    return paths


_LOADERS: dict[tuple, JiTLoader] = {}


def loader_of(beton: Path, order: str = "quasi_random", batch_size: int = B) -> JiTLoader:
    """A labels-only loader of ``beton`` (cached: building one compiles its pipeline), at epoch 0, nothing loaded."""
    key = (beton, order, batch_size)
    if key not in _LOADERS:
        kind = QuasiRandomOrder() if order == "quasi_random" else RandomOrder()
        _LOADERS[key] = JiTLoader(str(beton), batch_size=batch_size, num_workers=1, order=kind, seed=SEED,
                                  drop_last=True,
                                  pipelines={"image": None, "label": [IntDecoder()], "index": None, "checksum": None})
    loader = _LOADERS[key]
    loader.resume = ResumeTracker()
    loader.set_epoch(0)
    return loader


def state_after(loader: JiTLoader, batches: int) -> dict[str, Any]:
    """The state after ``batches`` batches of epoch 0."""
    it = iter(loader)
    for _ in range(batches):
        next(it)
    it.close()
    return loader.state_dict()


# --------------------------------------------------------------------------- #
# a state belongs to one beton
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("order", ["quasi_random", "random"])
def test_state_of_a_beton_with_another_shuffle_seed_is_refused(betons: dict[str, Path], order: str) -> None:
    """Same split, N and options, stored in another order: the saved position would deliver other images."""
    state = state_after(loader_of(betons["seed0"], order), 3)
    assert state["shuffle_seed"] == 0 and len(state["layout"]) == 16
    other = loader_of(betons["seed1"], order)
    with pytest.raises(ValueError, match=rf"saved on a beton with layout {state['layout']} \(shuffle seed 0\) but "
                                         rf"{betons['seed1']} has layout [0-9a-f]{{16}} \(shuffle seed 1\)"):
        other.load_state_dict(state)
    assert other.state_dict()["segments"] == [[1, 0]]  # nothing was loaded


def test_state_applies_to_an_identical_copy_of_the_beton(betons: dict[str, Path]) -> None:
    head = loader_of(betons["seed0"])
    order = list(head.sampler)
    state = state_after(head, 3)
    copy = loader_of(betons["copy"])
    copy.load_state_dict(state)
    assert list(copy.sampler) == order[3 * B:]


def test_state_without_a_layout_is_accepted_with_a_warning(betons: dict[str, Path]) -> None:
    """States saved before the layout existed still resume (nothing to check them against)."""
    state = state_after(loader_of(betons["seed0"]), 3)
    old = {k: v for k, v in state.items() if k not in ("layout", "shuffle_seed")} | {"batches": 3}
    after = loader_of(betons["copy"])
    with pytest.warns(UserWarning, match="has no beton layout"):
        after.load_state_dict(old)
    assert after.state_dict()["segments"] == [[1, 3 * B]] and "batches" not in after.state_dict()


# --------------------------------------------------------------------------- #
# not while an epoch runs
# --------------------------------------------------------------------------- #
def test_load_state_dict_during_an_epoch_is_refused(betons: dict[str, Path]) -> None:
    loader = loader_of(betons["seed0"])
    state = state_after(loader, 2)
    loader.set_epoch(0)
    it = iter(loader)
    first = [next(it) for _ in range(4)]
    with pytest.raises(RuntimeError, match="load_state_dict while epoch 0 is being iterated"):
        loader.load_state_dict(state)
    assert loader.state_dict()["segments"] == [[1, 4 * B]]  # still the running epoch's position
    rest = list(it)
    assert len(first) + len(rest) == 30 // B
    loader.load_state_dict(state)  # once the iterator is finished
    assert loader.state_dict()["segments"] == [[1, 2 * B]]


# --------------------------------------------------------------------------- #
# every field checked, fast, naming the field
# --------------------------------------------------------------------------- #
BAD_FIELDS = [
    ({"segments": [[1, 8.9]]}, r"field 'segments\[0\]\[1\] \(samples consumed\)' must be an integer in \[0, "),
    ({"epoch": 1.7}, r"field 'epoch' must be int, got 1.7 \(float\)"),
    ({"segments": [[1.9, 4]]}, r"'segments\[0\]\[0\] \(world size\)' must be an integer in \[1, 65536\], got 1.9"),
    ({"segments": [[1, "8"]]}, r"segments\[0\]\[1\] \(samples consumed\)' must be an integer .*got '8'"),
    ({"epoch": "3"}, r"field 'epoch' must be int, got '3' \(str\)"),
    ({"epoch": True}, r"field 'epoch' must be int, got True \(bool\)"),
    ({"segments": [[True, 4]]}, r"segments\[0\]\[0\] \(world size\)' must be an integer .*got True"),
    ({"segments": [[1, "x"]]}, r"segments\[0\]\[1\] \(samples consumed\)' must be an integer .*got 'x'"),
    ({"epoch": 2**63}, r"field 'epoch' must be an integer in \[0, 4611686018427387904\], got 9223372036854775808"),
    ({"epoch": -1}, r"field 'epoch' must be an integer in \[0, "),
    ({"segments": [[10**6, 0]]}, r"world size\)' must be an integer in \[1, 65536\], got 1000000"),
    ({"segments": [[10**9, 0], [1, 0]]}, r"world size\)' must be an integer in \[1, 65536\], got 1000000000"),
    ({"segments": [[1, 0, 0]]}, r"segments must be \[\[world, consumed\], ...\]"),
    ({"segments": "1,0"}, r"field 'segments' must be list, got '1,0'"),
    ({"seed": 3.0}, r"field 'seed' must be int, got 3.0"),
    ({"drop_last": 1}, r"field 'drop_last' must be bool, got 1"),
    ({"order": 0}, r"field 'order' must be str, got 0"),
    ({"buffer_pages": "4"}, r"field 'buffer_pages' must be int or None, got '4'"),
    ({"layout": 7}, r"field 'layout' must be str or None, got 7"),
    ({"extra": 1}, r"unknown field\(s\) \['extra'\]"),
    ({"version": True}, r"version True is not supported"),
]


@pytest.mark.parametrize(("change", "match"), BAD_FIELDS)
def test_bad_field_is_refused_fast_naming_it(betons: dict[str, Path], change: dict[str, Any], match: str) -> None:
    loader = loader_of(betons["seed0"])
    state = {**loader.state_dict(), **change}
    started = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        loader.load_state_dict(state)
    assert time.perf_counter() - started < 0.1
    assert loader.sampler.epoch == 0 and loader.state_dict()["segments"] == [[1, 0]]


@pytest.mark.parametrize("missing", ["epoch", "segments", "seed", "batch_size"])
def test_missing_field_is_named(betons: dict[str, Path], missing: str) -> None:
    loader = loader_of(betons["seed0"])
    state = {k: v for k, v in loader.state_dict().items() if k != missing}
    with pytest.raises(ValueError, match=rf"lacks the field\(s\) \['{missing}'\]"):
        loader.load_state_dict(state)


def test_changed_batch_size_is_named_not_buffer_pages(betons: dict[str, Path]) -> None:
    """buffer_pages defaults to 2 x batch_size: the option the user changed is batch_size."""
    state = state_after(loader_of(betons["seed0"], batch_size=4), 2)
    with pytest.raises(ValueError, match=r"saved with batch_size=4 but this loader has batch_size=2; build the "
                                         r"loader with batch_size=4"):
        loader_of(betons["seed0"]).load_state_dict(state)


def test_set_epoch_refuses_what_the_ops_cannot_hold(betons: dict[str, Path]) -> None:
    loader = loader_of(betons["seed0"])
    for bad in (2**63, 1.0, "1", True, -1):
        with pytest.raises(ValueError, match=r"epoch must be an integer in \[0, 2\*\*62\]"):
            loader.set_epoch(bad)
    loader.set_epoch(np.int64(2))
    assert loader.sampler.epoch == 2
