"""The public surface: every name in ``jit_ffcv.__all__`` resolves, the exceptions users catch among them."""

from __future__ import annotations

import subprocess
import sys

import jit_ffcv


def test_every_public_name_resolves() -> None:
    for name in jit_ffcv.__all__:
        assert getattr(jit_ffcv, name) is not None, name


def test_exceptions_and_warnings_are_exported() -> None:
    from jit_ffcv.epoch import LoaderThreadError
    from jit_ffcv.mixing import FolderOrderWarning
    from writers.metadata import BetonMismatchError, SidecarError

    assert jit_ffcv.LoaderThreadError is LoaderThreadError and issubclass(LoaderThreadError, RuntimeError)
    assert jit_ffcv.FolderOrderWarning is FolderOrderWarning and issubclass(FolderOrderWarning, UserWarning)
    assert jit_ffcv.BetonMismatchError is BetonMismatchError and jit_ffcv.SidecarError is SidecarError
    assert {"LoaderThreadError", "FolderOrderWarning", "BetonMismatchError", "SidecarError", "ChecksumError",
            "BetonReadError"} <= set(jit_ffcv.__all__)


def test_importing_the_package_is_light() -> None:
    """``import jit_ffcv`` imports neither torch, FFCV nor numba (the writer's workers import it)."""
    code = "import sys, jit_ffcv; print(sorted(m for m in ('torch', 'ffcv', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
