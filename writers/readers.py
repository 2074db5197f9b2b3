"""Reading back what the writer stored: payloads, labels and ImageFolder indices of a beton, fields by name."""

from __future__ import annotations

import os

import numpy as np


def read_payloads(beton: str | os.PathLike, limit: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """Stored image payloads (JPEG or raw bytes) and labels of a beton, in sample order (first ``limit``)."""
    from writers.ffcv_api import Reader, field_column

    reader = Reader(str(beton))
    table = reader.alloc_table
    size_of = dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True))
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    ptrs = reader.metadata[field_column(reader.field_names, "image")]["data_ptr"][:limit].tolist()
    payloads = [data[p : p + size_of[p]].tobytes() for p in ptrs]
    labels = reader.metadata[field_column(reader.field_names, "label")][:limit]
    return payloads, np.array(labels).reshape(-1)


def read_indices(beton: str | os.PathLike) -> np.ndarray | None:
    """ImageFolder index of every stored sample (its ``index`` field), or None for betons written without it."""
    from writers.ffcv_api import Reader, field_column

    reader = Reader(str(beton))
    if "index" not in reader.field_names:
        return None
    return np.array(reader.metadata[field_column(reader.field_names, "index")]).reshape(-1).astype(np.int64)
