"""FFCV behind one door: only writers/ffcv_api.py imports FFCV, and every internal it names exists."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jit_ffcv", "writers", "examples")
DOOR = ROOT / "writers" / "ffcv_api.py"


def imported_modules(path: Path) -> list[str]:
    """Every module an ``import``/``from ... import`` statement of ``path`` names (at any depth)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_only_the_door_imports_ffcv() -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for package in PACKAGES for path in (ROOT / package).rglob("*.py") if path != DOOR
        for name in imported_modules(path) if name == "ffcv" or name.startswith("ffcv.")
    )
    assert offenders == [], "import FFCV names from writers.ffcv_api only"


def test_the_door_does_import_ffcv() -> None:  # negative control for the scan above
    assert any(name.startswith("ffcv.") for name in imported_modules(DOOR))


def test_ffcv_is_the_checked_version() -> None:
    from writers.ffcv_api import FFCV_VERSION

    assert importlib.metadata.version("ffcv") == FFCV_VERSION


def _resolve(touch_point: str, instances: dict[str, object]) -> object:
    module, path = touch_point.split(":")
    first, *rest = path.split(".")
    obj = instances[first[:-2]] if first.endswith("()") else getattr(importlib.import_module(module), first)
    for attr in rest:
        obj = getattr(obj, attr)
    return obj


def test_every_touch_point_exists(raw_beton: Path) -> None:
    from writers.ffcv_api import TOUCH_POINTS, IntDecoder, Loader, OrderOption, Reader

    instances = {"Reader": Reader(str(raw_beton)),
                 "Loader": Loader(str(raw_beton), batch_size=2, num_workers=1, order=OrderOption.SEQUENTIAL,
                                  pipelines={"image": None, "label": [IntDecoder()], "index": None, "checksum": None})}
    assert len(TOUCH_POINTS) >= 10
    for touch_point in TOUCH_POINTS:
        assert _resolve(touch_point, instances) is not None, touch_point


def test_a_missing_touch_point_is_seen() -> None:  # negative control
    with pytest.raises(AttributeError):
        _resolve("ffcv.loader.loader:Loader.no_such_attribute", {})
