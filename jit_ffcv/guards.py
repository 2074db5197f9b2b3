"""What a :class:`~jit_ffcv.loader.JiTLoader` refuses before it decodes: checks that turn silent failures into errors.

A pipeline that copies to CUDA without CUDA (it failed at the first batch), epochs of zero steps
(``drop_last`` with fewer samples per rank than a batch: a training loop then logs ``nan`` and exits 0),
and a beton replaced or rewritten under a running loader (decoded into wrong pixels, without an error,
with ``os_cache=False``; a truncation under ``os_cache=True``'s memory map kills the process with SIGBUS).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from jit_ffcv.traversal import ShardedOrder
from writers.ffcv_api import ToDevice
from writers.metadata import BetonMismatchError

__all__ = ["check_devices", "check_steps", "check_unchanged", "file_identity"]


def check_devices(pipelines: dict[str, Any]) -> None:
    """Refuse a pipeline that copies batches to CUDA when this process has none (it would fail at the first batch)."""
    for name, ops in pipelines.items():
        for op in ops or ():
            device = getattr(op, "device", None) if isinstance(op, ToDevice) else None
            if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"pipeline {name!r} copies batches to device={str(device)!r} but CUDA is not "
                                 f"available here; use device='cpu' or run on a machine with a GPU")


def check_steps(loader: Any) -> None:
    """Refuse a loader whose epochs have no batch: drop_last with fewer samples per rank than batch_size."""
    samples = len(loader.first_traversal_order)
    if loader.drop_last and samples < loader.batch_size:
        order = loader.traversal_order
        where = f"rank {order.rank} of {order.num_replicas} gets" if isinstance(order, ShardedOrder) else "there are"
        raise ValueError(
            f"batch_size={loader.batch_size} is larger than the {samples} samples {where} per epoch "
            f"({loader.reader.num_samples} in {loader.reader.file_name}), and drop_last=True drops that partial batch: "
            f"every epoch would have 0 steps; use batch_size <= {samples}, fewer ranks, or drop_last=False")


def file_identity(path: str) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns) of ``path``: what changes when a file is replaced or rewritten."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def check_unchanged(path: str, opened: tuple[int, int, int, int]) -> None:
    """Refuse to start an epoch on a beton that changed since the loader opened it (it would decode wrong bytes)."""
    try:
        now = file_identity(path)
    except OSError as error:
        raise BetonMismatchError(f"{path} is gone since this loader opened it ({error.strerror}); restart the job "
                                 f"on the beton it should read") from None
    if now != opened:
        names = ("device", "inode", "size", "mtime_ns")
        what = ", ".join(f"{name} {a} -> {b}" for name, a, b in zip(names, opened, now, strict=True) if a != b)
        raise BetonMismatchError(
            f"{path} changed since this loader opened it ({what}): a beton rewritten under a running loader "
            f"delivers wrong pixels without an error; restart the job (a new loader) to read the new file, and "
            f"rewrite betons under a new name, not in place")
