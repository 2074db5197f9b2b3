"""Kernels compiled once per process and cached on disk, shared by every loader of the process.

FFCV compiles the code each op returns, afresh for every loader, with the op's values (seed,
flip probability, the epoch cell's address) frozen into it: about 9 s before the first batch,
every train, val or resumed loader, and ~24 MiB of machine code kept per loader. The ops of
:mod:`jit_ffcv.ops` and :mod:`jit_ffcv.layout` instead hand FFCV a Python function marked
``precompiled`` (``writers.ffcv_api`` passes it through) that calls a kernel below with those
values as arguments. Each kernel comes in two variants, a ``prange`` one for several decoding
threads and a plain loop for one (numba's ``workqueue`` layer, used with one CPU, must not run
parallel code from two loaders' threads at once), each compiled once for the argument types
and kept in numba's disk cache (``__pycache__``), so a fresh process loads it.

Numba's cache checks only the file of the function it caches, not the files of the functions
it calls: each variant closes over :data:`SOURCE_HASH`, the hash of every file whose code it
compiles in, so editing any of them recompiles the kernels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from numba import njit
from numba.extending import overload

from jit_ffcv.checksum import MISMATCH, payload_ok
from jit_ffcv.jpeg import decode_rgb

__all__ = ["SOURCE_HASH", "chw_copy", "chw_mirror", "decode_batch", "flip_decision", "mirror_copy", "mirror_inplace",
           "precompiled", "to_chw_batch", "variant"]

_HERE = Path(__file__).resolve().parent
#: hash of the sources compiled into the kernels (see the module docstring)
_SOURCES = ("kernels.py", "jpeg.py", "checksum.py")
SOURCE_HASH = hashlib.sha256(b"".join((_HERE / name).read_bytes() for name in _SOURCES)).hexdigest()
_KERNEL = dict(nogil=True, fastmath=True, error_model="numpy", cache=True)

# uint64 indices on purpose: with signed ones numba emits a negative-index wrap check on every
# access, which stops LLVM from vectorising these loops (15-35x slower, measured).
_U1, _U2, _U3 = np.uint64(1), np.uint64(2), np.uint64(3)


# --------------------------------------------------------------------------- flips
@njit(inline="always")
def _mix(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser: a cheap, well-distributed 64-bit hash step."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(nogil=True, cache=True)
def flip_decision(seed: int, epoch: int, index: int, prob: float) -> bool:
    """True if sample ``index`` is flipped in ``epoch``: ``U(seed, epoch, index) < prob``."""
    h = _mix(_mix(_mix(np.uint64(seed)) ^ np.uint64(epoch)) ^ np.uint64(index))
    return (h >> np.uint64(11)) * (1.0 / 9007199254740992.0) < prob


@njit(**_KERNEL)
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


@njit(**_KERNEL)
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


@njit(**_KERNEL)
def _copy(source: np.ndarray, image: np.ndarray) -> None:
    """Copy the flat bytes ``source`` into the C-contiguous ``image``."""
    dst = image.reshape(-1)
    for j in range(np.uint64(dst.size)):
        dst[j] = source[j]


# --------------------------------------------------------------------------- layout
@njit(**_KERNEL)
def chw_copy(source: np.ndarray, out: np.ndarray) -> None:
    """Write the C-contiguous HWC uint8 ``source`` (any shape, H*W*3 bytes) into the 3xHxW ``out``."""
    src = source.reshape(-1)
    dst = out.reshape(-1)
    plane = np.uint64(out.shape[1] * out.shape[2])
    two = plane + plane
    for p in range(plane):
        q = _U3 * p
        dst[p] = src[q]
        dst[plane + p] = src[q + _U1]
        dst[two + p] = src[q + _U2]


@njit(**_KERNEL)
def chw_mirror(source: np.ndarray, out: np.ndarray) -> None:
    """Like :func:`chw_copy`, mirrored left-right: ``out[c, r, x] = source[r, W - 1 - x, c]``, in one pass."""
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


@njit(inline="always")
def _to_chw(source: np.ndarray, out: np.ndarray, mirror: bool) -> None:
    if mirror:
        chw_mirror(source, out)
    else:
        chw_copy(source, out)


# --------------------------------------------------------------------------- FFCV's stored bytes
def read_sample(address: int, state: tuple) -> np.ndarray:
    """The stored bytes at ``address``, from FFCV's OS-cache or process-cache state (in compiled code only)."""
    raise NotImplementedError("read_sample runs in compiled code only")


@overload(read_sample, inline="always")
def _read_sample(address, state):  # type: ignore[no-untyped-def]  # numba's types; no annotations (numba compares them)
    if len(state) == 3:  # OS cache: (mmap of the file, sorted sample pointers, their sizes)
        def mapped(address, state):  # type: ignore[no-untyped-def]
            size = state[2][np.searchsorted(state[1], address)]
            return state[0][address:address + size]

        return mapped

    def cached(address, state):  # type: ignore[no-untyped-def]  # process cache: + cached pages, page -> slot
        size = state[2][np.searchsorted(state[1], address)]
        page, offset = divmod(address, np.uint64(state[0].shape[1]))
        return state[0][state[3][page], offset:offset + size]

    return cached


# --------------------------------------------------------------------------- batch kernels
def _decode_batch(loop: Callable, source_hash: str) -> Callable:
    def decode_batch(indices, out, scratch, metadata, state, jpg, seed, epoch, prob, flags, chw,  # type: ignore[no-untyped-def]  # noqa: E501
                     checksums):
        """Decode (JPEG) or copy (raw) each sample of ``indices`` into ``out``, mirrored where the flip hash says.

        ``chw``: ``out`` is Bx3xHxW, a JPEG is decoded into its numba thread's HxWx3 ``scratch`` image
        (``scratch[numba.get_thread_id()]``, reused, so it stays in that core's cache) and transposed
        right away; else ``out`` is BxHxWx3. ``checksums``: every sample's stored checksum (empty: not
        verified); a payload that does not match is not decoded (status ``MISMATCH``).
        Returns the decode status of each sample (0: decoded).
        """
        source_hash  # noqa: B018  (a closure value: part of numba's cache key)
        status = np.zeros(len(indices), dtype=np.int32)
        for i in loop(len(indices)):
            index = indices[i]
            field = metadata[index]
            data = read_sample(np.uint64(field["data_ptr"]), state)
            if not payload_ok(data, checksums, index):
                status[i] = MISMATCH
                continue
            flip = flip_decision(seed, epoch, index, prob)
            if field["mode"] == jpg:
                image = scratch[numba.get_thread_id()] if chw else out[i]
                status[i] = decode_rgb(data, image, flags)
                if status[i] != 0:
                    continue
                if chw:  # still in cache: transposed (and mirrored) right away
                    _to_chw(image, out[i], flip)
                elif flip:
                    mirror_inplace(image)
            elif chw:
                _to_chw(data, out[i], flip)
            elif flip:
                mirror_copy(data, out[i])
            else:
                _copy(data, out[i])
        return status

    return decode_batch


def _to_chw_batch(loop: Callable, source_hash: str) -> Callable:
    def to_chw_batch(images, out):  # type: ignore[no-untyped-def]
        """Each HxWx3 image of ``images`` transposed into the 3xHxW ``out[i]``."""
        source_hash  # noqa: B018
        for i in loop(images.shape[0]):
            chw_copy(images[i], out[i])

    return to_chw_batch


def _variants(factory: Callable[[Callable, str], Callable]) -> tuple[Callable, Callable]:
    """The one-thread and the ``prange`` variant of a batch kernel (distinct closures: distinct cache entries)."""
    return (njit(**_KERNEL)(factory(range, SOURCE_HASH)),
            njit(parallel=True, **_KERNEL)(factory(numba.prange, SOURCE_HASH)))


decode_batch = _variants(_decode_batch)
to_chw_batch = _variants(_to_chw_batch)


def variant(kernel: tuple[Callable, Callable], threads: int) -> Callable:
    """The variant of ``kernel`` for ``threads`` decoding threads (FFCV's ``Compiler.num_threads``)."""
    return kernel[threads > 1]


def precompiled(function: Callable) -> Callable:
    """Mark ``function`` (Python calling compiled kernels) as code FFCV must not compile (see ``writers.ffcv_api``)."""
    function.precompiled = True  # type: ignore[attr-defined]
    return function
