"""A custom numba op written as docs/loading.md invites, the DataModules that add it, and a bare-FFCV epoch runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.ops import EpochCell
from writers.ffcv_api import AllocationQuery, Compiler, IntDecoder, Loader, Operation, OrderOption, State


class AddOffset(Operation):
    """Example custom op: add ``offset`` (mod 256) to every pixel of HWC uint8 images, in place.

    Written like :class:`~jit_ffcv.ops.SeededHorizontalFlip`: ``generate_code`` returns a
    plain function that FFCV compiles with numba (``prange`` over the batch when it runs
    with several threads), and ``declare_state_and_memory`` keeps the state (jitted, no new
    buffer) because the op works in place.
    """

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.offset = np.uint8(offset)

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        offset = self.offset

        def add_offset(images, _dst):  # type: ignore[no-untyped-def]
            for i in my_range(images.shape[0]):
                images[i] += offset  # uint8 arithmetic wraps around
            return images

        add_offset.is_parallel = True
        return add_offset

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | None]:
        return replace(previous_state, jit_mode=True), None


class OffsetDataModule(JiTDataModule):
    """The documented way to add an op: extend the public ``train_image_ops`` hook."""

    def train_image_ops(self) -> list[Operation]:
        return super().train_image_ops() + [AddOffset(100)]


class LegacyOffsetDataModule(JiTDataModule):
    """A subclass written against the earlier, private hook ``_get_train_transforms(epoch_cell)`` still works."""

    def _get_train_transforms(self, epoch_cell: EpochCell | None = None) -> list[Operation]:
        return super()._get_train_transforms(epoch_cell) + [AddOffset(100)]


def run_epochs(path: Path, pipeline: list[Operation], cell: EpochCell, workers: int,
                epochs: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """All images and labels of each epoch, SEQUENTIAL order, batch 8 (last batch partial)."""
    loader = Loader(str(path), batch_size=8, num_workers=workers, order=OrderOption.SEQUENTIAL,
                    drop_last=False,
                    pipelines={"image": pipeline, "label": [IntDecoder()], "index": None, "checksum": None})
    out = {}
    for epoch in epochs:
        cell.set(epoch)
        # FFCV reuses its output buffers: copy every batch before the next one is produced
        batches = [(np.array(x), np.array(y)) for x, y in loader]
        assert [len(b[0]) for b in batches] == [8, 8, 4]
        out[epoch] = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]).reshape(-1))
    return out
