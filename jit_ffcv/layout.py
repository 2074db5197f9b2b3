"""Contiguous NCHW uint8 batches, as ``PILToTensor`` + ``default_collate`` give.

FFCV's ``ToTorchImage(channels_last=True)`` returns an NCHW-shaped view of
channels-last memory (``x.view(B, -1)`` fails); its ``channels_last=False``
makes a temporary contiguous copy in the consumer's thread, then copies it
again into its buffer. Here the transpose runs in the parallel decoding stage,
straight into a reused ``(B, 3, H, W)`` buffer: folded into the decoder
(``FlipDecoder(chw=True)``, each image transposed right after it is decoded,
while still in cache, mirrored in the same pass when flipped), or as the
stand-alone op :class:`ToCHW` after custom HWC ops.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from numba import njit

from writers.ffcv_api import AllocationQuery, Compiler, Operation, State

__all__ = ["ToCHW", "chw_copy", "chw_mirror", "compile_chw_copy", "compile_to_chw", "hwc_to_chw"]

# uint64 indices on purpose: with signed ones numba emits a negative-index wrap
# check on every access, which stops LLVM from vectorising these loops.
_U1, _U2, _U3 = np.uint64(1), np.uint64(2), np.uint64(3)


def _chw_copy(source: np.ndarray, out: np.ndarray) -> None:
    src = source.reshape(-1)
    dst = out.reshape(-1)
    plane = np.uint64(out.shape[1] * out.shape[2])
    two = plane + plane
    for p in range(plane):
        q = _U3 * p
        dst[p] = src[q]
        dst[plane + p] = src[q + _U1]
        dst[two + p] = src[q + _U2]


def _chw_mirror(source: np.ndarray, out: np.ndarray) -> None:
    src = source.reshape(-1)
    dst = out.reshape(-1)
    height, width = np.uint64(out.shape[1]), np.uint64(out.shape[2])
    plane = height * width
    two = plane + plane
    last = _U3 * (width - _U1)  # first byte of a row's last pixel
    for r in range(height):
        row = r * width
        base = _U3 * row + last
        for x in range(width):
            q = base - _U3 * x
            dst[row + x] = src[q]
            dst[plane + row + x] = src[q + _U1]
            dst[two + row + x] = src[q + _U2]


_KERNEL = dict(nogil=True, fastmath=True, error_model="numpy")


def compile_chw_copy() -> Callable:
    """A fresh dispatcher of :func:`chw_copy`, for one compiled pipeline.

    Like :func:`jit_ffcv.jpeg.compile_decode_rgb`: with numba 0.68 a pipeline compiled in
    FFCV's thread fails with a KeyError (and the loader hangs) when it needs a new overload
    of a dispatcher already compiled for other array types (measured here too).
    """
    return njit(**_KERNEL)(_chw_copy)


def compile_to_chw() -> Callable:
    """A fresh ``to_chw(source, out, mirror)``: :func:`chw_mirror` if ``mirror`` else :func:`chw_copy`.

    Fresh dispatchers for one compiled pipeline (see :func:`compile_chw_copy`).
    """
    copy_kernel, mirror_kernel = njit(**_KERNEL)(_chw_copy), njit(**_KERNEL)(_chw_mirror)

    @njit(nogil=True)
    def to_chw(source: np.ndarray, out: np.ndarray, mirror: bool) -> None:
        if mirror:
            mirror_kernel(source, out)
        else:
            copy_kernel(source, out)

    return to_chw


#: Write the C-contiguous HWC uint8 ``source`` (any shape, H*W*3 bytes) into the 3xHxW ``out``.
chw_copy = compile_chw_copy()
#: Like :func:`chw_copy`, mirrored left-right: ``out[c, r, x] = source[r, W - 1 - x, c]``, in one pass.
chw_mirror = njit(**_KERNEL)(_chw_mirror)
hwc_to_chw = chw_copy  # the earlier name of the unmirrored transpose


class ToCHW(Operation):
    """HWC uint8 images -> contiguous CHW, one image per decoding thread (put it before ``ToTensor``).

    Used after custom HWC ops; a lone ``FlipDecoder`` writes CHW itself (``chw=True``, no second pass).
    """

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        transpose = compile_chw_copy()

        def to_chw(images, dst):  # type: ignore[no-untyped-def]
            for i in my_range(images.shape[0]):
                transpose(images[i], dst[i])
            return dst[: images.shape[0]]

        to_chw.is_parallel = True
        return to_chw

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        if previous_state.shape is None or len(previous_state.shape) != 3 or previous_state.shape[2] != 3:
            raise ValueError(f"ToCHW expects HxWx3 images, got shape {previous_state.shape}")
        height, width, channels = previous_state.shape
        shape = (channels, height, width)
        return replace(previous_state, shape=shape, jit_mode=True), AllocationQuery(shape, previous_state.dtype)
