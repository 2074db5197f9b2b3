"""A beton being written: samples appended through FFCV's own page allocator, under a hidden partial name.

FFCV's ``DatasetWriter`` runs the user's ``__getitem__`` in its own workers and hangs if one
raises; we only borrow its header, metadata and page layout, so the file is byte-compatible
with any FFCV 1.0.2 reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from writers.checksum import FIELD as CHECKSUM
from writers.checksum import payload_checksum
from writers.lifecycle import critical
from writers.output import partial_path, remove_quietly


class AllocationTable:
    """FFCV's ``MemoryAllocator.allocations`` as a numpy table: 24 bytes a sample, not a Python tuple.

    FFCV keeps one ``(sample_id, ptr, size)`` tuple per allocation (~150 bytes each, ~190 MB at
    ImageNet-1k) and ``finalize`` turns each into a numpy scalar (as much again). This supports
    what ``MemoryAllocator.malloc`` does with the list (append, ``[-1]``, pop, truth) and hands
    ``finalize`` the finished table as one worker's allocations.
    """

    def __init__(self, capacity: int, dtype: np.dtype) -> None:
        self.rows = np.zeros(max(capacity, 1), dtype=dtype)
        self.count = 0

    def append(self, row: tuple[int, int, int]) -> None:
        """Add one allocation, doubling the table when full."""
        if self.count == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
        self.rows[self.count] = row
        self.count += 1

    def pop(self) -> np.void:
        """Remove and return the last allocation."""
        self.count -= 1
        return self.rows[self.count]

    def __getitem__(self, i: int) -> np.void:
        if not -self.count <= i < self.count:
            raise IndexError(f"allocation {i} out of range ({self.count} rows)")
        return self.rows[i % self.count]

    def __len__(self) -> int:
        return self.count

    def table(self) -> np.ndarray:
        """The rows written so far (FFCV's on-disk allocation table)."""
        return self.rows[:self.count]


class BetonFile:
    """Appends pre-encoded samples to a beton at ``path``: ``image``, ``label``, by default ``index`` and ``checksum``.

    ``checksum`` is each payload's :func:`writers.checksum.payload_checksum`, which the loader verifies.
    """

    def __init__(self, path: Path, capacity: int, mode: str, quality: int, index_field: bool = True,
                 checksum_field: bool = True, page_size: int | None = None) -> None:
        from writers.ffcv_api import (
            ALLOC_TABLE_TYPE,
            IMAGE_MODE_CODES,
            DatasetWriter,
            IntField,
            MemoryAllocator,
            RGBImageField,
            field_column,
        )

        self.path = path
        self.mode_code = IMAGE_MODE_CODES[mode]
        fields = {"image": RGBImageField(write_mode=mode, jpeg_quality=quality), "label": IntField()}
        self.index_field = index_field  # only replicas of betons written before the field lack it
        if index_field:
            fields["index"] = IntField()
        self.checksum_field = checksum_field  # False only to make betons as written before the field (tests)
        if checksum_field:
            fields[CHECKSUM] = IntField()
        pages = {} if page_size is None else {"page_size": page_size}  # FFCV's default (8 MiB) unless asked (tests)
        self.writer = DatasetWriter(str(path), fields, num_workers=1, **pages)
        self.writer.num_samples = capacity  # an upper bound: skipped files leave unused rows
        self.metadata = self.image = None
        self.allocator = None
        try:
            with critical():  # the /dev/shm segment exists between prepare() and unlink(): no signal in between
                self.writer.prepare()
                # Unlink the /dev/shm segment now: our mapping stays valid and nothing is left behind,
                # whatever kills this process (no one else attaches to it by name).
                self.writer.metadata_sm.unlink()
                self.metadata = np.frombuffer(self.writer.metadata_sm.buf, dtype=self.writer.metadata_type)
                self.allocator = MemoryAllocator(str(path), self.writer.data_region_start, self.writer.page_size)
                self.allocator.__enter__()
                self.allocator.allocations = AllocationTable(capacity, ALLOC_TABLE_TYPE)
            self.column = {name: field_column(fields, name) for name in fields}
            self.image = self.metadata[self.column["image"]]
        except BaseException:  # no caller holds this half-made object: release its views and segment now
            self.abort(unlink=True)
            raise
        self.count = 0
        self.payload_bytes = 0

    def append(self, payload: bytes, label: int, img_size: int, index: int | None = None,
               checksum: int | None = None) -> None:
        """Store one sample; ``index`` is its ImageFolder index (required with an ``index`` field).

        ``checksum``: the payload's :func:`~writers.checksum.payload_checksum` if already computed (by a worker).
        """
        if (index is None) == self.index_field:
            raise ValueError(f"index must be {'an int' if self.index_field else 'None'} for this beton, got {index!r}")
        i = self.count
        self.allocator.set_current_sample(i)
        ptr, buffer = self.allocator.malloc(len(payload))
        buffer[:] = np.frombuffer(payload, dtype=np.uint8)
        self.image["mode"][i] = self.mode_code
        self.image["height"][i] = img_size
        self.image["width"][i] = img_size
        self.image["data_ptr"][i] = ptr
        self.metadata[self.column["label"]][i] = label
        if index is not None:
            self.metadata[self.column["index"]][i] = index
        if self.checksum_field:
            self.metadata[self.column[CHECKSUM]][i] = payload_checksum(payload) if checksum is None else checksum
        self.count += 1
        self.payload_bytes += len(payload)

    def close(self) -> None:
        """Flush the last page, write metadata, allocation table and header."""
        self.allocator.__exit__(None, None, None)
        self.writer.header["num_samples"] = self.count
        del self.metadata, self.image  # release the views before the shared memory is closed
        self.writer.finalize([self.allocator.allocations.table()])  # one "worker", one numpy table
        self.writer.metadata_sm.close()

    def abort(self, unlink: bool = False) -> None:
        """Release the file and the shared memory after a failure (``unlink``: also its name, if still there)."""
        try:
            if self.allocator is not None and getattr(self.allocator, "fp", None) is not None:
                self.allocator.fp.close()
        finally:
            self.metadata = self.image = None
            segment = getattr(self.writer, "metadata_sm", None)
            if hasattr(segment, "close"):  # FFCV sets it to 3 before creating the segment
                segment.close()
                if unlink:
                    try:
                        segment.unlink()
                    except FileNotFoundError:
                        pass


@contextmanager
def partial_beton(out: Path, capacity: int, mode: str, quality: int, index_field: bool = True,
                  checksum_field: bool = True, page_size: int | None = None) -> Iterator[BetonFile]:
    """A beton being written at ``out``'s hidden partial path: closed on success, deleted on failure."""
    partial = partial_path(out)
    beton: BetonFile | None = None
    try:
        with critical():  # a signal is raised once ``beton`` holds the file, never between: abort() always runs
            beton = BetonFile(partial, capacity, mode, quality, index_field, checksum_field, page_size)
        yield beton
        beton.close()
    except BaseException:
        if beton is not None:
            beton.abort()  # dropped without it, the segment's __del__ meets live views: "Exception ignored"
        remove_quietly(partial, "partial beton")
        raise
