"""Contiguous NCHW uint8 batches, as ``PILToTensor`` + ``default_collate`` give.

FFCV's ``ToTorchImage(channels_last=True)`` returns an NCHW-shaped view of
channels-last memory (``x.view(B, -1)`` fails); its ``channels_last=False``
makes a temporary contiguous copy in the consumer's thread, then copies it
again into its buffer. :class:`ToCHW` instead transposes each image, in the
parallel decoding stage, straight into a reused ``(B, 3, H, W)`` buffer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from numba import njit

from jit_ffcv._ffcv import AllocationQuery, Compiler, Operation, State

__all__ = ["ToCHW", "hwc_to_chw"]

_U3 = np.uint64(3)


@njit(nogil=True, fastmath=True, error_model="numpy")
def hwc_to_chw(image: np.ndarray, out: np.ndarray) -> None:
    """Write the C-contiguous HxWx3 uint8 ``image`` into the C-contiguous 3xHxW ``out``."""
    src = image.reshape(-1)
    dst = out.reshape(-1)
    plane = np.uint64(image.shape[0] * image.shape[1])
    two = plane + plane
    for p in range(plane):  # uint64 indices: no wrap checks, the loop vectorises
        q = _U3 * p
        dst[p] = src[q]
        dst[plane + p] = src[q + np.uint64(1)]
        dst[two + p] = src[q + np.uint64(2)]


class ToCHW(Operation):
    """HWC uint8 images -> contiguous CHW, one image per decoding thread (put it before ``ToTensor``)."""

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()

        def to_chw(images, dst):  # type: ignore[no-untyped-def]
            for i in my_range(images.shape[0]):
                hwc_to_chw(images[i], dst[i])
            return dst[: images.shape[0]]

        to_chw.is_parallel = True
        return to_chw

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        if previous_state.shape is None or len(previous_state.shape) != 3 or previous_state.shape[2] != 3:
            raise ValueError(f"ToCHW expects HxWx3 images, got shape {previous_state.shape}")
        height, width, channels = previous_state.shape
        shape = (channels, height, width)
        return replace(previous_state, shape=shape, jit_mode=True), AllocationQuery(shape, previous_state.dtype)
