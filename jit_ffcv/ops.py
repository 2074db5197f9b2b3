"""Numba-compiled FFCV operations whose randomness is a pure function of (seed, epoch, index).

FFCV compiles each operation once and freezes the values it captures, so an op
cannot see the epoch through a Python attribute. :class:`EpochCell` is a tiny
int64 that compiled code reads through its address at run time; the loader
writes the epoch into it before each epoch. With it, a flip decision is
``hash(seed, epoch, sample index) < p``: reproducible across runs, thread counts
and ranks, unlike FFCV's ``RandomHorizontalFlip`` (unseeded global numpy state).

Two ways to flip, same decisions, same pixels:

* :class:`FlipDecoder` flips while decoding (the default: no extra pass over
  memory): raw images are copied mirrored instead of ``memcpy``-ed, JPEGs are
  decoded exactly as Pillow does (:mod:`jit_ffcv.jpeg`) and mirrored right after
  decoding while still in cache. With ``chw=True`` it writes contiguous CHW
  images, the transpose and the mirror folded into that same copy.
* :class:`SeededHorizontalFlip` is a stand-alone, in-place op to put anywhere in
  a pipeline; it is also the template for writing your own numba op.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Callable

import numba
import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic

from writers.ffcv_api import (
    IMAGE_MODES,
    AllocationQuery,
    Compiler,
    Operation,
    SimpleRGBImageDecoder,
    State,
    memcpy,
)
from jit_ffcv.jpeg import compile_decode_rgb, compile_raise_on_failure, decode_flags
from jit_ffcv.layout import ToCHW, compile_to_chw

__all__ = ["EpochCell", "FlipDecoder", "SeededHorizontalFlip", "ToUnitRange", "flip_decision", "flip_mask", "nchw_ops",
           "read_int64"]


@intrinsic
def read_int64(typingctx, address):  # type: ignore[no-untyped-def]
    """Load the int64 stored at a raw ``address`` (numba intrinsic, used for :class:`EpochCell`)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        pointer = builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.int64)))
        return builder.load(pointer)

    return types.int64(address), codegen


class EpochCell:
    """An int64 that compiled ops read at run time (via :func:`read_int64` of :attr:`address`)."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = np.zeros(1, dtype=np.int64)
        self.set(epoch)

    @property
    def address(self) -> int:
        """Raw address of the value; valid for the life of this object."""
        return int(self._value.ctypes.data)

    def set(self, epoch: int) -> None:
        """Publish ``epoch`` to every op compiled against this cell."""
        self._value[0] = epoch

    def get(self) -> int:
        """The current epoch."""
        return int(self._value[0])


@njit(inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser: a cheap, well-distributed 64-bit hash step."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(nogil=True)
def flip_decision(seed: int, epoch: int, index: int, prob: float) -> bool:
    """True if sample ``index`` is flipped in ``epoch``: ``U(seed, epoch, index) < prob``."""
    h = _mix(_mix(_mix(np.uint64(seed)) ^ np.uint64(epoch)) ^ np.uint64(index))
    return (h >> np.uint64(11)) * (1.0 / 9007199254740992.0) < prob


@njit(nogil=True)
def _flip_mask(seed: int, epoch: int, indices: np.ndarray, prob: float) -> np.ndarray:
    out = np.empty(len(indices), dtype=np.bool_)
    for i in range(len(indices)):
        out[i] = flip_decision(seed, epoch, indices[i], prob)
    return out


def flip_mask(seed: int, epoch: int, indices: np.ndarray, prob: float) -> np.ndarray:
    """Vector of :func:`flip_decision` for ``indices`` (for inspection and tests)."""
    return _flip_mask(seed, epoch, np.asarray(indices, dtype=np.int64), prob)


# The two kernels below index with uint64 on purpose: with signed indices numba
# emits a negative-index wrap check on every access, which stops LLVM from turning
# the 3-byte pixel reversal into byte shuffles (15-35x slower, measured).
_U1, _U2, _U3 = np.uint64(1), np.uint64(2), np.uint64(3)


@njit(nogil=True, fastmath=True, error_model="numpy")
def mirror_inplace(image: np.ndarray) -> None:
    """Mirror one C-contiguous HxWx3 uint8 image left-right in place (row via a temp buffer)."""
    height, width = np.uint64(image.shape[0]), np.uint64(image.shape[1])
    flat = image.reshape(-1)
    row_bytes = _U3 * width
    row = np.empty(image.shape[1] * 3, dtype=np.uint8)
    for r in range(height):
        base = r * row_bytes
        for j in range(row_bytes):
            row[j] = flat[base + j]
        for c in range(width):
            out = base + _U3 * c
            src = _U3 * (width - _U1 - c)
            flat[out] = row[src]
            flat[out + _U1] = row[src + _U1]
            flat[out + _U2] = row[src + _U2]


@njit(nogil=True, fastmath=True, error_model="numpy")
def mirror_copy(source: np.ndarray, image: np.ndarray) -> None:
    """Write the mirror of ``source`` (flat HWC bytes) into the C-contiguous HxWx3 ``image``."""
    height, width = np.uint64(image.shape[0]), np.uint64(image.shape[1])
    dst = image.reshape(-1)
    row_bytes = _U3 * width
    for r in range(height):
        base = r * row_bytes
        for c in range(width):
            out = base + _U3 * c
            src = base + _U3 * (width - _U1 - c)
            dst[out] = source[src]
            dst[out + _U1] = source[src + _U1]
            dst[out + _U2] = source[src + _U2]


def check_prob(flip_prob: float) -> float:
    """Validate a flip probability (ValueError naming the option otherwise)."""
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
    return float(flip_prob)


class FlipDecoder(SimpleRGBImageDecoder):
    """Decode fixed-size RGB images and mirror the chosen ones in the same pass.

    ``flip_decision(seed, epoch, index, flip_prob)`` decides; the epoch comes from
    ``epoch_cell`` (set by the loader), so one compiled pipeline serves all epochs.
    JPEGs are decoded with libjpeg-turbo's accurate IDCT (``jpeg_decode="accurate"``:
    Pillow's pixels exactly) or, opt-in, its fast IDCT (``"fast"``: biased, see the
    README). ``flip_prob=0`` makes it the plain decoder of the val pipeline. A payload
    that cannot be decoded raises a RuntimeError naming its sample index.
    ``chw=True`` outputs 3xHxW images instead of HxWx3 (see :meth:`declare_state_and_memory`).
    """

    def __init__(self, *, flip_prob: float = 0.5, seed: int = 0, epoch_cell: EpochCell | None = None,
                 jpeg_decode: str = "accurate", chw: bool = False) -> None:
        super().__init__()
        self.flip_prob = check_prob(flip_prob)
        self.seed = int(seed)
        self.epoch_cell = epoch_cell or EpochCell()
        self.jpeg_flags = decode_flags(jpeg_decode)
        self.jpeg_decode = jpeg_decode
        if not isinstance(chw, bool):
            raise TypeError(f"chw must be True or False, got {chw!r}")
        self.chw = chw

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | tuple]:
        """HWC: one HxWx3 buffer. CHW: an HxWx3 scratch (JPEG decoding) and the 3xHxW output."""
        state, hwc = super().declare_state_and_memory(previous_state)
        if not self.chw:
            return state, hwc
        height, width, channels = state.shape
        shape = (channels, height, width)
        return replace(state, shape=shape), (hwc, AllocationQuery(shape, state.dtype))

    def generate_code(self) -> Callable:
        mem_read = self.memory_read
        memcpy_c = Compiler.compile(memcpy)
        decode_rgb, raise_on_failure = compile_decode_rgb(), compile_raise_on_failure()  # fresh: see jit_ffcv.jpeg
        my_range = Compiler.get_iterator()
        jpg = IMAGE_MODES["jpg"]
        to_chw = compile_to_chw()  # fresh, like decode_rgb
        seed, prob, address, flags = self.seed, self.flip_prob, self.epoch_cell.address, self.jpeg_flags
        max_threads = numba.config.NUMBA_NUM_THREADS  # thread ids are below it, whatever the layer

        def decode(batch_indices, destination, metadata, storage_state):  # type: ignore[no-untyped-def]
            epoch = read_int64(address)
            status = np.zeros(len(batch_indices), dtype=np.int32)
            for i in my_range(len(batch_indices)):
                index = batch_indices[i]
                field = metadata[index]
                data = mem_read(field["data_ptr"], storage_state)
                flip = flip_decision(seed, epoch, index, prob)
                if field["mode"] == jpg:
                    status[i] = decode_rgb(data, destination[i], flags)
                    if flip and status[i] == 0:
                        mirror_inplace(destination[i])
                elif flip:
                    mirror_copy(data, destination[i])
                else:
                    memcpy_c(data, destination[i])
            raise_on_failure(status, batch_indices)
            return destination[: len(batch_indices)]

        def decode_chw(batch_indices, buffers, metadata, storage_state):  # type: ignore[no-untyped-def]
            scratch, destination = buffers
            epoch = read_int64(address)
            status = np.zeros(len(batch_indices), dtype=np.int32)
            per_thread = scratch.shape[0] >= max_threads
            for i in my_range(len(batch_indices)):
                index = batch_indices[i]
                field = metadata[index]
                data = mem_read(field["data_ptr"], storage_state)
                flip = flip_decision(seed, epoch, index, prob)
                if field["mode"] == jpg:
                    # one scratch image per thread, reused, stays in that core's cache (one per image
                    # would be a fresh 196 KiB at 256 px each time: ~6% slower, measured on one core)
                    hwc = scratch[numba.get_thread_id()] if per_thread else scratch[i]
                    status[i] = decode_rgb(data, hwc, flags)
                    if status[i] == 0:  # still in cache: transposed (and mirrored) right away
                        to_chw(hwc, destination[i], flip)
                else:
                    to_chw(data, destination[i], flip)
            raise_on_failure(status, batch_indices)
            return destination[: len(batch_indices)]

        chosen = decode_chw if self.chw else decode
        chosen.is_parallel = True
        return chosen


def nchw_ops(image_ops: list[Operation]) -> list[Operation]:
    """``image_ops`` (HWC, decoder first) made to output contiguous CHW images, at least cost.

    A lone :class:`FlipDecoder` (the DataModule's default pipelines) is swapped for a copy
    with ``chw=True``; after other ops a :class:`~jit_ffcv.layout.ToCHW` pass is appended.
    """
    if len(image_ops) == 1 and isinstance(image_ops[0], FlipDecoder):
        folded = copy.copy(image_ops[0])
        folded.chw = True
        return [folded]
    return [*image_ops, ToCHW()]


class SeededHorizontalFlip(Operation):
    """In-place random horizontal flip of a batch of HWC uint8 images.

    A template for custom numba ops: ``generate_code`` returns a plain function
    that FFCV compiles; ``with_indices`` makes FFCV pass the batch's sample
    indices; ``declare_state_and_memory`` declares no new buffer (in place).
    """

    def __init__(self, flip_prob: float = 0.5, *, seed: int = 0, epoch_cell: EpochCell | None = None) -> None:
        super().__init__()
        self.flip_prob = check_prob(flip_prob)
        self.seed = int(seed)
        self.epoch_cell = epoch_cell or EpochCell()

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        seed, prob, address = self.seed, self.flip_prob, self.epoch_cell.address

        def flip(images, _dst, indices):  # type: ignore[no-untyped-def]
            epoch = read_int64(address)
            for i in my_range(images.shape[0]):
                if flip_decision(seed, epoch, indices[i], prob):
                    mirror_inplace(images[i])
            return images

        flip.is_parallel = True
        flip.with_indices = True
        return flip

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | None]:
        if previous_state.shape is None or len(previous_state.shape) != 3:
            raise ValueError("SeededHorizontalFlip expects HWC images: put it right after the image decoder")
        return replace(previous_state, jit_mode=True), None


class ToUnitRange(Operation):
    """uint8 NCHW tensor -> float32 ``x / 255 * 2 - 1`` (JiT's model input), on the tensor's device.

    Put it after ``ToDevice`` so the conversion runs on the GPU and only uint8
    crosses PCIe (4x fewer bytes than float32).
    """

    def generate_code(self) -> Callable:
        def to_unit_range(inp, dst):  # type: ignore[no-untyped-def]
            out = torch.div(inp, 255, out=dst[: inp.shape[0]])  # uint8 -> float32 in the same pass
            return out.mul_(2).sub_(1)

        return to_unit_range

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | None]:
        state = replace(previous_state, jit_mode=False, dtype=torch.float32)
        return state, AllocationQuery(previous_state.shape, torch.float32, previous_state.device)
