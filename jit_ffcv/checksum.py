"""Verifying each sample's stored bytes against the checksum the writer stored (``writers.checksum``).

The decode kernel (:mod:`jit_ffcv.kernels`) recomputes the ``words64/1`` hash of every payload it
reads, before decoding it, and compares it with the sample's ``checksum`` field; a mismatch is the
decode status :data:`MISMATCH`, which :func:`raise_on_mismatch` turns into a :class:`ChecksumError`
naming the sample and the beton. A beton written without the field (before the checksum existed)
has nothing to compare with: its loaders decode without verification (``jit-ffcv info`` says so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numba import njit

from writers.checksum import FIELD, GOLDEN

__all__ = ["MISMATCH", "NO_CHECKSUMS", "ChecksumError", "bind_checksums", "checksum_column", "damaged_samples",
           "payload_hash", "payload_ok", "raise_on_mismatch"]

#: decode status of a sample whose stored bytes do not match its checksum (jpeg.py's statuses are -1..-6)
MISMATCH = -100
#: what the kernel gets when nothing is verified (a beton without checksums, or verification off)
NO_CHECKSUMS = np.zeros(0, dtype=np.int64)
_U8 = np.uint64(8)


class ChecksumError(RuntimeError):
    """A sample's stored bytes differ from the bytes the writer stored (bit rot, a bad copy, a file changed)."""


@njit(inline="always")
def _mix(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(inline="always")
def _word(data: np.ndarray, start: np.uint64, end: np.uint64) -> np.uint64:
    """Little-endian uint64 of ``data[start:end]`` (at most 8 bytes), zero-padded."""
    word = np.uint64(0)
    for j in range(start, end):
        word |= np.uint64(data[j]) << (_U8 * (j - start))
    return word


@njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def payload_hash(data: np.ndarray) -> np.uint64:
    """The ``words64/1`` hash of the bytes ``data`` (same value as ``writers.checksum.payload_checksum``)."""
    size = np.uint64(data.size)
    words = size // _U8
    total = np.uint64(0)
    for i in range(words):
        base = _U8 * i
        total += _mix(_word(data, base, base + _U8) + (i + np.uint64(1)) * GOLDEN)
    if size % _U8:
        total += _mix(_word(data, _U8 * words, size) + (words + np.uint64(1)) * GOLDEN)
    return _mix(total ^ size)


@njit(inline="always")
def payload_ok(data: np.ndarray, checksums: np.ndarray, index: int) -> bool:
    """True if ``checksums`` is empty (nothing to verify) or sample ``index``'s stored checksum matches ``data``."""
    return checksums.size == 0 or payload_hash(data) == np.uint64(checksums[index])


def checksum_column(reader: Any) -> np.ndarray | None:
    """Every sample's stored checksum (int64, contiguous), or None for a beton written without them.

    A field of that name that is not an integer one (another writer's) is not ours: None as well.
    """
    from writers.ffcv_api import stored_field

    column = stored_field(reader, FIELD)
    if column is None or column.dtype != np.int64:
        return None
    return np.ascontiguousarray(column).reshape(-1)


@njit(nogil=True, cache=True)
def _mismatches(data: np.ndarray, ptrs: np.ndarray, sizes: np.ndarray, checksums: np.ndarray) -> np.ndarray:
    bad = np.zeros(ptrs.size, dtype=np.bool_)
    for i in range(ptrs.size):
        bad[i] = payload_hash(data[ptrs[i]:ptrs[i] + sizes[i]]) != np.uint64(checksums[i])
    return np.flatnonzero(bad)


def damaged_samples(reader: Any) -> np.ndarray | None:
    """Stored ids whose image payload fails its checksum, reading the file once (None: a beton without them)."""
    from writers.ffcv_api import stored_field

    checksums = checksum_column(reader)
    if checksums is None:
        return None
    table = np.sort(reader.alloc_table, order="ptr")
    ptrs = np.ascontiguousarray(stored_field(reader, "image")["data_ptr"]).astype(np.uint64)
    sizes = table["size"][np.searchsorted(table["ptr"], ptrs)].astype(np.uint64)
    data = np.asarray(np.memmap(reader.file_name, dtype=np.uint8, mode="r"))  # a truncated file: short slices
    return _mismatches(data, ptrs, sizes, checksums)


def bind_checksums(pipelines: Mapping[str, Any], reader: Any, verify: bool = True) -> bool:
    """Give every op of ``pipelines`` that verifies (a ``checksums`` attribute) the beton's checksums and name.

    Call it once the loader has opened the beton (``loader.pipeline_specs``, ``loader.reader``), before its
    first epoch; ``verify=False`` unbinds them. Returns whether the ops verify: False also for a beton
    written without checksums (its ops then decode unverified).
    """
    column = checksum_column(reader) if verify else None
    for op in _ops(pipelines.values()):
        if hasattr(op, "checksums"):
            op.checksums = NO_CHECKSUMS if column is None else column
            op.beton = str(reader.file_name)
    return column is not None


def _ops(specs: Iterable[Any]) -> Iterable[Any]:
    """The ops of FFCV pipeline specs (or plain op lists)."""
    for spec in specs:
        yield from ([spec.decoder, *spec.transforms] if hasattr(spec, "transforms") else list(spec or []))


def raise_on_mismatch(statuses: np.ndarray, indices: np.ndarray, beton: str) -> None:
    """Raise a :class:`ChecksumError` naming the first sample of ``indices`` whose stored bytes failed their check."""
    failed = np.flatnonzero(statuses == MISMATCH)
    if len(failed):
        raise ChecksumError(
            f"sample {indices[failed[0]]} of {beton or 'the beton'}: its stored bytes do not match the checksum "
            f"written with them ({len(failed)} such sample(s) in this batch): the file was damaged or changed "
            f"after it was written; check it with `jit-ffcv info BETON --verify`, then copy or write it again")
