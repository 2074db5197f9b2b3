"""Per-batch gathering of the stored JPEG bytes, for decoding on the GPU (see :mod:`jit_ffcv.gpu_decode`).

:class:`GatherJpegBytes` is the image pipeline's first (and only) op when the GPU decodes: it
copies each sample's stored JPEG into one row of a reused ``(B, max_bytes)`` uint8 buffer and
writes ``(length, flip)`` into a ``(B, 2)`` int64 buffer. The flip bit is the CPU path's
``flip_decision(seed, epoch, index, flip_prob)``, read from the same :class:`~jit_ffcv.ops.EpochCell`,
so order, flips and labels stay exactly those of :class:`~jit_ffcv.ops.FlipDecoder`.

Raw betons are refused (one line at pipeline construction): they store pixels, not JPEGs, and the
CPU path already only copies them. Both buffers live in the loader's reused slots: a batch stays
valid until the consumer has taken the second batch after it (see :mod:`jit_ffcv.epoch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from jit_ffcv.ops import EpochCell, epoch_cell_of, flip_decision, read_int64
from writers.checks import probability
from writers.ffcv_api import IMAGE_MODES, AllocationQuery, Compiler, Reader, SimpleRGBImageDecoder, State, stored_field

__all__ = ["LENGTH", "FLIP", "GatherJpegBytes", "max_payload_bytes", "stored_payloads"]

#: columns of the per-sample info buffer: the JPEG's length in bytes and its flip bit (0 or 1)
LENGTH, FLIP = 0, 1


def _pointers(reader: Reader, path: str | Path, field: str) -> np.ndarray:
    """Where each sample's payload of ``field`` starts (ValueError naming the beton's fields if absent)."""
    column = stored_field(reader, field)
    if column is None:
        raise ValueError(f"{path} has no field {field!r}; its fields are {list(reader.field_names)}")
    return column["data_ptr"]


def max_payload_bytes(path: str | Path, field: str = "image") -> int:
    """Largest stored payload of ``field`` in the beton at ``path``: the row width of the gathered bytes."""
    reader = Reader(str(path))
    pointers = _pointers(reader, path, field)
    table = reader.alloc_table
    sizes = table["size"][np.isin(table["ptr"], pointers)]
    if sizes.size == 0:
        raise ValueError(f"{path} stores no payload for field {field!r} (an empty beton?)")
    return int(sizes.max())


def stored_payloads(path: str | Path, field: str = "image") -> list[np.ndarray]:
    """Every sample's stored payload of ``field`` (the JPEG bytes of a jpg beton), in stored order, memory-mapped."""
    reader = Reader(str(path))
    pointers = _pointers(reader, path, field)
    table = reader.alloc_table
    size_of = dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return [data[int(p): int(p) + size_of[int(p)]] for p in pointers]


class GatherJpegBytes(SimpleRGBImageDecoder):
    """Copy each sample's stored JPEG into a ``(B, max_bytes)`` row and its ``(length, flip)`` into ``(B, 2)``.

    The output of the pipeline is the tuple ``(bytes, info)``: row ``i`` of ``bytes`` holds
    ``info[i, LENGTH]`` valid bytes (the rest is stale), ``info[i, FLIP]`` is 1 if sample ``i``
    is mirrored by the decoder's caller. ``max_bytes`` comes from :func:`max_payload_bytes`.
    A subclass of FFCV's image decoder only because FFCV takes a pipeline's first op as the
    field's decoder when it is an instance of the field's decoder class.
    """

    def __init__(self, max_bytes: int, *, flip_prob: float = 0.5, seed: int = 0,
                 epoch_cell: EpochCell | None = None) -> None:
        super().__init__()
        if int(max_bytes) < 1:
            raise ValueError(f"max_bytes must be >= 1 (use max_payload_bytes(beton)), got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.flip_prob = probability("flip_prob", flip_prob)
        self.seed = int(seed)
        self.epoch_cell = epoch_cell  # None: a JiTLoader hands it its cell (ops.hand_epoch)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, tuple[AllocationQuery, ...]]:
        """Two buffers per batch: the bytes and the info; a raw beton is refused here, before any epoch."""
        modes = np.unique(self.metadata["mode"])
        if not np.array_equal(modes, [IMAGE_MODES["jpg"]]):
            raise ValueError("GPU decode needs a jpg beton (mode='jpg'); this one stores raw pixels: "
                             "decode it on the CPU (the default) or rewrite it with mode='jpg'")
        state = replace(previous_state, jit_mode=True, shape=(self.max_bytes,), dtype=np.dtype(np.uint8))
        return state, (AllocationQuery((self.max_bytes,), np.dtype(np.uint8)),
                       AllocationQuery((2,), np.dtype(np.int64)))

    def generate_code(self) -> Callable:
        """Compile-ready gather: one parallel loop over the batch, bytes copied with one slice assignment."""
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        seed, prob, address, width = self.seed, self.flip_prob, epoch_cell_of(self).address, self.max_bytes

        def gather(batch_indices, buffers, metadata, storage_state):  # type: ignore[no-untyped-def]
            payload, info = buffers
            epoch = read_int64(address)
            for i in my_range(len(batch_indices)):
                index = batch_indices[i]
                data = mem_read(metadata[index]["data_ptr"], storage_state)
                n = min(data.size, width)  # == data.size: width is the beton's largest payload
                payload[i, :n] = data[:n]
                info[i, 0] = data.size
                info[i, 1] = 1 if flip_decision(seed, epoch, index, prob) else 0
            count = len(batch_indices)
            return payload[:count], info[:count]

        gather.is_parallel = True
        return gather
