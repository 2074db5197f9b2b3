"""Numba-compiled FFCV operations whose randomness is a pure function of (seed, epoch, index).

The epoch lives in an :class:`EpochCell`, a tiny int64 that the loader writes before each
epoch; a :class:`~jit_ffcv.loader.JiTLoader` hands its cell to every op with an
``epoch_cell`` attribute (:func:`hand_epoch`). A flip decision is
``hash(seed, epoch, sample index) < p``: reproducible across runs, thread counts and ranks,
unlike FFCV's ``RandomHorizontalFlip`` (unseeded global numpy state). :class:`FlipDecoder`
passes the epoch, seed and probability as arguments to a kernel compiled once per process
(:mod:`jit_ffcv.kernels`); code that FFCV compiles itself (the template below, custom ops)
freezes the values it captures, and reads the epoch through the cell's address.

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
import numbers
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numba
import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic

from jit_ffcv.checksum import NO_CHECKSUMS, raise_on_mismatch
from jit_ffcv.jpeg import decode_flags, raise_on_failure
from jit_ffcv.kernels import decode_batch, flip_decision, mirror_copy, mirror_inplace, precompiled, variant
from jit_ffcv.layout import ToCHW
from writers.ffcv_api import AllocationQuery, Compiler, Operation, SimpleRGBImageDecoder, State

__all__ = ["JPG_MODE", "EpochCell", "FlipDecoder", "SeededHorizontalFlip", "ToUnitRange", "check_prob", "epoch_cell_of",
           "flip_decision", "flip_mask", "hand_epoch", "mirror_copy", "mirror_inplace", "nchw_ops", "read_int64"]

#: FFCV's ``IMAGE_MODES["jpg"]`` (a numba typed dict: reading it from Python compiles its lookup, ~2 s)
JPG_MODE = 0
#: seeds the flip hash takes (a numba int64)
SEED_LIMIT = 2**63


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


@njit(nogil=True)
def _flip_mask(seed: int, epoch: int, indices: np.ndarray, prob: float) -> np.ndarray:
    out = np.empty(len(indices), dtype=np.bool_)
    for i in range(len(indices)):
        out[i] = flip_decision(seed, epoch, indices[i], prob)
    return out


def hand_epoch(pipelines: Mapping[str, Any], cell: EpochCell) -> None:
    """Give every op of ``pipelines`` (FFCV's ``Loader`` argument) that has an ``epoch_cell`` attribute ``cell``.

    A :class:`~jit_ffcv.loader.JiTLoader` calls it with its own cell before FFCV generates the
    pipeline's code, so ops (also custom ones) built without a cell flip per epoch.
    """
    for spec in pipelines.values():
        ops = [spec.decoder, *spec.transforms] if hasattr(spec, "transforms") else list(spec or [])
        for op in ops:
            if hasattr(op, "epoch_cell"):
                op.epoch_cell = cell


def flip_mask(seed: int, epoch: int, indices: np.ndarray, prob: float) -> np.ndarray:
    """Vector of :func:`flip_decision` for ``indices`` (for inspection and tests)."""
    return _flip_mask(seed, epoch, np.asarray(indices, dtype=np.int64), prob)


def _check(name: str, value: Any, kind: type | tuple[type, ...], expected: str, valid: bool = True) -> Any:
    """``value`` if it is a ``kind`` (not a bool, unless asked) and ``valid``, else a one-line error naming the option.

    TypeError for the wrong type (``flip_prob="0.5"``), ValueError for a value out of range.
    """
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, (bool, np.bool_)) and bool not in kinds):
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if not valid:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_prob(flip_prob: float) -> float:
    """Validate a flip probability (TypeError or ValueError naming the option otherwise)."""
    number = isinstance(flip_prob, numbers.Real)
    return float(_check("flip_prob", flip_prob, numbers.Real, "a number in [0, 1]", number and 0 <= flip_prob <= 1))


def _check_common(flip_prob: float, seed: int, epoch_cell: EpochCell | None) -> tuple[float, int, EpochCell | None]:
    """The options every flipping op takes, validated."""
    integer = isinstance(seed, numbers.Integral)
    _check("seed", seed, numbers.Integral, "an integer in [0, 2**63)", integer and 0 <= seed < SEED_LIMIT)
    _check("epoch_cell", epoch_cell, (EpochCell, type(None)), "an EpochCell or None")
    return check_prob(flip_prob), int(seed), epoch_cell


_NO_EPOCH = EpochCell()  # read by ops whose flip_prob (0 or 1) needs no epoch; never set


def epoch_cell_of(op: Any) -> EpochCell:
    """The cell ``op`` reads its epoch from; without one, only ``flip_prob`` 0 or 1 (no epoch needed) works."""
    if op.epoch_cell is None:
        if op.flip_prob not in (0.0, 1.0):
            raise ValueError(f"{type(op).__name__}(flip_prob={op.flip_prob}) has no epoch: use it in a JiTLoader, "
                             f"which hands it its epoch, or pass epoch_cell=EpochCell() and set it before each epoch")
        return _NO_EPOCH
    return op.epoch_cell


class FlipDecoder(SimpleRGBImageDecoder):
    """Decode fixed-size RGB images and mirror the chosen ones in the same pass.

    ``flip_decision(seed, epoch, index, flip_prob)`` decides; the epoch comes from
    ``epoch_cell``, which a :class:`~jit_ffcv.loader.JiTLoader` sets to its own, so one compiled
    pipeline serves all epochs. JPEGs are decoded with libjpeg-turbo's accurate IDCT
    (``jpeg_decode="accurate"``: Pillow's pixels exactly) or, opt-in, its fast IDCT (``"fast"``:
    biased, see the README). ``flip_prob=0`` makes it the plain decoder of the val pipeline. A
    payload that cannot be decoded raises a RuntimeError naming its sample index.
    ``chw=True`` outputs 3xHxW images instead of HxWx3 (see :meth:`declare_state_and_memory`).
    ``verify_checksums``: check each payload against the checksum stored with it before decoding
    (:mod:`jit_ffcv.checksum`; a :class:`~jit_ffcv.checksum.ChecksumError` names the sample and beton); the
    loader binds the beton's checksums (:func:`~jit_ffcv.checksum.bind_checksums`), none for older betons.
    The kernel is compiled once per process (:mod:`jit_ffcv.kernels`); the options are its arguments.
    """

    def __init__(self, *, flip_prob: float = 0.5, seed: int = 0, epoch_cell: EpochCell | None = None,
                 jpeg_decode: str = "accurate", chw: bool = False, verify_checksums: bool = True) -> None:
        super().__init__()
        self.verify_checksums = _check("verify_checksums", verify_checksums, bool, "True or False")
        self.checksums, self.beton = NO_CHECKSUMS, ""  # set by bind_checksums once the loader opened the beton
        self.flip_prob, self.seed, self.epoch_cell = _check_common(flip_prob, seed, epoch_cell)
        self.jpeg_flags = decode_flags(jpeg_decode)
        self.jpeg_decode = jpeg_decode
        self.chw = _check("chw", chw, bool, "True or False")

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        """HWC: one HxWx3 buffer. CHW: the 3xHxW output (JPEGs are decoded into a per-thread scratch image)."""
        state, hwc = super().declare_state_and_memory(previous_state)
        self._hwc = state.shape
        if not self.chw:
            return state, hwc
        height, width, channels = state.shape
        shape = (channels, height, width)
        return replace(state, shape=shape), AllocationQuery(shape, state.dtype)

    def generate_code(self) -> Callable:
        """A call into the decode kernel compiled once per process, with this op's options as arguments."""
        kernel = variant(decode_batch, Compiler.num_threads)
        epoch_cell_of(self)  # no epoch to read: say so now, not at the first batch
        seed, prob, flags, chw = np.int64(self.seed), np.float64(self.flip_prob), np.int32(self.jpeg_flags), self.chw
        hwc, numba_threads = self._hwc, numba.config.NUMBA_NUM_THREADS if Compiler.num_threads > 1 else 1

        @precompiled
        def decode(batch_indices, destination, metadata, storage_state):  # type: ignore[no-untyped-def]
            out = destination
            scratch = thread_scratch(hwc, numba_threads) if chw else out
            epoch = np.int64(epoch_cell_of(self).get())  # the cell may be bound after this code was made
            checksums = self.checksums if self.verify_checksums else NO_CHECKSUMS
            status = kernel(batch_indices, out, scratch, metadata, storage_state, JPG_MODE, seed, epoch, prob, flags,
                            chw, checksums)
            raise_on_mismatch(status, batch_indices, self.beton)
            raise_on_failure(status, batch_indices)
            return out[: len(batch_indices)]

        return decode


_scratch = threading.local()


def thread_scratch(shape: tuple[int, ...], count: int) -> np.ndarray:
    """This thread's ``count`` uint8 images of ``shape`` (one per numba thread it may run), kept for reuse."""
    images = _scratch.__dict__.setdefault("images", {})
    if (shape, count) not in images:
        images[(shape, count)] = np.empty((count, *shape), dtype=np.uint8)
    return images[(shape, count)]


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

    A template for custom numba ops: ``generate_code`` returns a plain function that FFCV
    compiles; ``with_indices`` makes FFCV pass the batch's sample indices;
    ``declare_state_and_memory`` declares no new buffer (in place). An ``epoch_cell`` attribute
    (``None`` until then) makes a :class:`~jit_ffcv.loader.JiTLoader` hand the op its epoch cell
    before the code is generated; the compiled code reads the epoch through its address.
    """

    def __init__(self, flip_prob: float = 0.5, *, seed: int = 0, epoch_cell: EpochCell | None = None) -> None:
        super().__init__()
        self.flip_prob, self.seed, self.epoch_cell = _check_common(flip_prob, seed, epoch_cell)

    def generate_code(self) -> Callable:
        """The in-place flip FFCV compiles (the template for custom ops)."""
        my_range = Compiler.get_iterator()
        seed, prob, address = self.seed, self.flip_prob, epoch_cell_of(self).address

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
        """In place: the state stays, no buffer; refuses anything but HWC images."""
        if previous_state.shape is None or len(previous_state.shape) != 3:
            raise ValueError("SeededHorizontalFlip expects HWC images: put it right after the image decoder")
        return replace(previous_state, jit_mode=True), None


class ToUnitRange(Operation):
    """uint8 NCHW tensor -> float32 ``x / 255 * 2 - 1`` (JiT's model input), on the tensor's device.

    Put it after ``ToDevice`` so the conversion runs on the GPU and only uint8
    crosses PCIe (4x fewer bytes than float32).
    """

    def generate_code(self) -> Callable:
        """A torch function (runs on the tensor's device): ``x / 255 * 2 - 1`` into the float buffer."""

        def to_unit_range(inp, dst):  # type: ignore[no-untyped-def]
            out = torch.div(inp, 255, out=dst[: inp.shape[0]])  # uint8 -> float32 in the same pass
            return out.mul_(2).sub_(1)

        return to_unit_range

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery | None]:
        """A float32 buffer of the same shape on the same device."""
        state = replace(previous_state, jit_mode=False, dtype=torch.float32)
        return state, AllocationQuery(previous_state.shape, torch.float32, previous_state.device)
