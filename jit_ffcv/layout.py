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

from collections.abc import Callable
from dataclasses import replace

from jit_ffcv.kernels import chw_copy, chw_mirror, precompiled, to_chw_batch, variant
from writers.ffcv_api import AllocationQuery, Compiler, Operation, State

__all__ = ["ToCHW", "chw_copy", "chw_mirror"]


class ToCHW(Operation):
    """HWC uint8 images -> contiguous CHW, one image per decoding thread (put it before ``ToTensor``).

    Used after custom HWC ops; a lone ``FlipDecoder`` writes CHW itself (``chw=True``, no second pass).
    """

    def generate_code(self) -> Callable:
        """The batch transpose, a kernel compiled once per process."""
        kernel = variant(to_chw_batch, Compiler.num_threads)  # compiled once per process (jit_ffcv.kernels)

        @precompiled
        def to_chw(images, dst):  # type: ignore[no-untyped-def]
            kernel(images, dst)
            return dst[: images.shape[0]]

        return to_chw

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        """3xHxW output of the same dtype; refuses anything but HxWx3 input."""
        if previous_state.shape is None or len(previous_state.shape) != 3 or previous_state.shape[2] != 3:
            raise ValueError(f"ToCHW expects HxWx3 images, got shape {previous_state.shape}")
        height, width, channels = previous_state.shape
        shape = (channels, height, width)
        return replace(previous_state, shape=shape, jit_mode=True), AllocationQuery(shape, previous_state.dtype)
