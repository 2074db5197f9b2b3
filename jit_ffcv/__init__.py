"""jit-ffcv: FFCV loading for JiT, with the reference crop baked in once.

The public surface is listed in ``__all__``. Names are imported lazily (PEP 562)
so that light users (the writer's worker processes, ``jit-ffcv info``) do not
pay for importing torch, Lightning and FFCV.
"""

from __future__ import annotations

import importlib
from typing import Any

from writers import __version__  # one version for both packages

_EXPORTS: dict[str, str] = {
    "center_crop_arr": "writers.crop",
    "JiTDataModule": "jit_ffcv.datamodule",
    "create_jit_datamodule": "jit_ffcv.datamodule",
    "QuasiRandomOrder": "jit_ffcv.traversal",
    "RandomOrder": "jit_ffcv.traversal",
    "SequentialOrder": "jit_ffcv.traversal",
    "SeededHorizontalFlip": "jit_ffcv.ops",
    "FlipDecoder": "jit_ffcv.ops",
    "ToUnitRange": "jit_ffcv.ops",
    "EpochCell": "jit_ffcv.ops",
    "JiTLoader": "jit_ffcv.loader",
    "epoch_order": "jit_ffcv.order",
    "write_beton": "writers.beton",
    "read_metadata": "writers.metadata",
    # what a user may need to catch
    "LoaderThreadError": "jit_ffcv.epoch",
    "FolderOrderWarning": "jit_ffcv.mixing",
    "BetonMismatchError": "writers.metadata",
    "SidecarError": "writers.metadata",
    "BetonExistsError": "writers.output",
    "LockError": "writers.lock",
    "ChecksumError": "jit_ffcv.checksum",
    "BetonReadError": "writers.ffcv_api",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jit_ffcv' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
