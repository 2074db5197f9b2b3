"""A benchmark helper: a large beton made in seconds from a small one, by copying its stored payloads."""

from __future__ import annotations

import os
from pathlib import Path

from writers.beton_file import partial_beton
from writers.metadata import BetonMetadata, file_sha256, read_metadata
from writers.options import DEFAULT_QUALITY
from writers.publish import publish
from writers.readers import read_indices, read_payloads


def replicate_beton(src: str | os.PathLike, out: str | os.PathLike, times: int) -> BetonMetadata:
    """Write ``out`` holding ``src``'s samples ``times`` times over (for benchmarks).

    Copies the stored payloads, so a large beton is made in seconds without
    decoding or cropping again; the sidecar is ``src``'s with counts scaled.
    """
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times!r}")
    meta = read_metadata(src)
    payloads, labels = read_payloads(src)
    indices = read_indices(src)
    index_list = [None] * len(payloads) if indices is None else indices.tolist()
    out = Path(out)
    quality = meta.quality or DEFAULT_QUALITY
    with partial_beton(out, len(payloads) * times, meta.mode, quality, indices is not None) as beton:
        for _ in range(times):
            for payload, label, index in zip(payloads, labels.tolist(), index_list, strict=True):
                beton.append(payload, label, meta.img_size, index)
    partial = beton.path
    meta.num_samples = beton.count
    meta.class_counts = [c * times for c in meta.class_counts]
    meta.size_bytes = partial.stat().st_size
    meta.payload_bytes = beton.payload_bytes
    meta.sha256 = file_sha256(partial)
    meta.source = f"{meta.source} (x{times} via replicate_beton)"
    publish(partial, out, meta)
    return meta
