"""Look inside a beton: ``jit-ffcv info`` (metadata and figures) and ``jit-ffcv show`` (a captioned PNG grid).

``show`` decodes the chosen samples with the val pipeline's decoder (:class:`~jit_ffcv.ops.FlipDecoder`
without flips) in a :class:`~jit_ffcv.loader.JiTLoader`, so its tiles are the pixels training sees,
captioned with the class folder name, label, stored sample id and ImageFolder index to check them against.
FFCV (and with it torch and numba) is imported on first use, so that building the command line for
``jit-ffcv write`` does not import it (the writer forks workers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jit_ffcv.grid import Sample, render_grid
from writers.checksum import ALGORITHM
from writers.checksum import FIELD as CHECKSUM
from writers.metadata import BetonMetadata, BetonMismatchError, read_metadata, verify_file

if TYPE_CHECKING:
    from writers.ffcv_api import Reader

__all__ = ["ClassCounts", "add_info_arguments", "add_show_arguments", "class_counts", "info_main", "load_samples",
           "payload_sizes", "pick_ids", "show", "show_main"]

PROG = "jit-ffcv"
DEFAULT_SHOW = 16


# ------------------------------------------------------------------------------------------- fields
def _reader(beton: str | Path | Reader) -> Reader:
    """FFCV's ``Reader`` of ``beton`` (a path, or a reader already open)."""
    from writers.ffcv_api import Reader

    return beton if isinstance(beton, Reader) else Reader(str(beton))


def _labels(reader: Reader) -> np.ndarray:
    """Every stored sample's label, in stored order."""
    from writers.ffcv_api import stored_field

    labels = stored_field(reader, "label")
    if labels is None:
        raise ValueError(f"{reader.file_name} has no 'label' field: it was not written by jit-ffcv")
    return np.asarray(labels).reshape(-1).astype(np.int64)


def payload_sizes(beton: str | Path | Reader) -> np.ndarray:
    """Stored bytes of every sample's image (JPEG or raw pixels), from FFCV's allocation table.

    This is what the images weigh, without FFCV's page padding, header and tables.
    """
    reader = _reader(beton)
    from writers.ffcv_api import stored_field

    image = stored_field(reader, "image")
    if image is None:
        raise ValueError(f"{reader.file_name} has no 'image' field: it was not written by jit-ffcv")
    table = reader.alloc_table
    order = np.argsort(table["ptr"])
    ptrs, sizes = table["ptr"][order], table["size"][order]
    wanted = np.asarray(image["data_ptr"])
    at = np.searchsorted(ptrs, wanted)
    if np.any(at >= len(ptrs)) or np.any(ptrs[np.minimum(at, len(ptrs) - 1)] != wanted):
        raise ValueError(f"{reader.file_name}: an image's data pointer is missing from FFCV's allocation table; "
                         f"the beton is damaged, write it again")
    return sizes[at].astype(np.int64)


# --------------------------------------------------------------------------------------------- info
@dataclass(frozen=True)
class ClassCounts:
    """Samples per class of a beton (classes with no sample count as 0)."""

    counts: np.ndarray
    classes: list[str]

    def line(self) -> str:
        """``min 3 (n01440764), median 5, max 7 samples over 4 classes``; ties for the minimum are counted."""
        low = int(self.counts.min())
        smallest = [self.classes[i] for i in np.flatnonzero(self.counts == low)]
        more = f" and {len(smallest) - 1} more" if len(smallest) > 1 else ""
        return (f"min {low} ({smallest[0]}{more}), median {float(np.median(self.counts)):g}, "
                f"max {int(self.counts.max())} samples over {len(self.classes)} classes")


def class_counts(beton: str | Path | Reader, classes: list[str]) -> ClassCounts:
    """Count the beton's own labels per class (not the sidecar's figures)."""
    reader = _reader(beton)
    labels = _labels(reader)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{reader.file_name} holds labels outside [0, {len(classes)}), the classes of its sidecar; "
                         f"the beton and its .json do not belong together")
    return ClassCounts(np.bincount(labels, minlength=len(classes)), list(classes))


def _bytes_line(reader: Reader) -> str:
    """Payload bytes per image (mean, max) next to the file's bytes per image (page padding included)."""
    sizes = payload_sizes(reader)
    file_per_image = Path(reader.file_name).stat().st_size / max(len(sizes), 1)
    mean, top = (float(sizes.mean()), int(sizes.max())) if len(sizes) else (0.0, 0)
    return (f"payload mean {mean:,.0f} B ({mean / 1024:.1f} KiB), max {top:,} B; "
            f"file {file_per_image:,.0f} B/image ({file_per_image / 1024:.1f} KiB, pages and tables included)")


def _layout(meta: BetonMetadata, has_index: bool) -> str:
    """How stored samples relate to ImageFolder order, and how to trace one back to its file."""
    trace = "sample i is ImageFolder sample index[i] (field 'index')" if has_index else (
        "sample i is the i-th non-skipped file (no index field)")
    if meta.sample_order == "shuffled":
        return f"shuffled (seed {meta.shuffle_seed}); {trace}"
    return f"ImageFolder (class-sorted), mixes classes poorly with order='quasi_random'; {trace}"


def _checksums_line(reader: Reader) -> str:
    """Whether the loader can verify each sample's stored bytes (betons written before the field cannot)."""
    if CHECKSUM in reader.handlers:
        return f"one per sample ({ALGORITHM}), checked before decoding (DataModule default: all but raw train betons)"
    return ("none (written before jit-ffcv stored them): samples are decoded unverified; write the beton again "
            "to have them checked")


def _verify_samples(reader: Reader) -> None:
    """Name the stored samples whose bytes fail their checksum (``--verify``), before the whole file's SHA-256."""
    from jit_ffcv.checksum import damaged_samples

    damaged = damaged_samples(reader)
    if damaged is not None and len(damaged):
        listed = ", ".join(str(i) for i in damaged[:10].tolist()) + (", ..." if len(damaged) > 10 else "")
        raise BetonMismatchError(f"{reader.file_name}: {len(damaged)} stored sample(s) fail their checksum "
                                 f"(ids {listed}): the file was damaged or changed after it was written; copy or "
                                 f"write it again")


def info_main(args: argparse.Namespace) -> int:
    """Print a beton's metadata, its sample count as FFCV reads it, per-class counts and bytes per image."""
    meta = read_metadata(args.beton)  # a missing beton or a broken sidecar is an error naming the file
    reader = _reader(args.beton)
    if args.verify:
        _verify_samples(reader)
    verify_file(args.beton, meta, checksum=args.verify)
    reader_samples = int(reader.num_samples)
    print(f"beton:        {args.beton}")
    print(f"samples:      {reader_samples} (metadata: {meta.num_samples})")
    print(f"split:        {meta.split}   img_size: {meta.img_size}   mode: {meta.mode}   quality: {meta.quality}")
    print(f"classes:      {meta.num_classes} ({', '.join(meta.classes[:3])}{', ...' if meta.num_classes > 3 else ''})")
    print(f"per class:    {class_counts(reader, meta.classes).line()}")
    kib_per_image = meta.size_bytes / max(meta.num_samples, 1) / 1024
    print(f"size:         {meta.size_bytes / 2**20:.1f} MiB ({kib_per_image:.1f} KiB/image of file, pages and tables "
          f"included; `write` reports the payload mean, on the next line)")
    print(f"bytes/image:  {_bytes_line(reader)}")
    print(f"crop:         {meta.crop}   source: {meta.source}")
    print(f"written:      {meta.seconds:.1f} s, {meta.images_per_second:.0f} img/s, {meta.num_workers} workers, "
          f"writer {meta.writer_version}")
    print(f"order:        {_layout(meta, 'index' in reader.handlers)}")
    print(f"checksums:    {_checksums_line(reader)}")
    print(f"skipped:      {len(meta.skipped)}   ignored (non-image): {len(meta.ignored)}")
    for s in meta.skipped:
        print(f"  {s['path']}: {s['error']}")
    print(f"sha256:       {meta.sha256}{'  (verified)' if args.verify else ''}")
    if reader_samples != meta.num_samples:
        print(f"{PROG}: error: {args.beton} holds {reader_samples} samples but its metadata says {meta.num_samples}; "
              f"rewrite it", file=sys.stderr)
        return 1
    return 0


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jit-ffcv info``."""
    parser.add_argument("beton")
    parser.add_argument("--verify", action="store_true",
                        help="also check each sample's checksum (naming the damaged ones) and the file's SHA-256")


# --------------------------------------------------------------------------------------------- show
def pick_ids(num_samples: int, n: int, seed: int, indices: Sequence[int] | None = None) -> np.ndarray:
    """Stored sample ids to show: ``indices`` as given, else ``min(n, N)`` distinct ids drawn with ``seed``, sorted."""
    if num_samples < 1:
        raise ValueError("the beton holds no sample to show")
    if indices:
        bad = [i for i in indices if not 0 <= i < num_samples]
        if bad:
            raise ValueError(f"--indices {bad[0]} is out of range: this beton holds samples 0 to {num_samples - 1}")
        return np.asarray(indices, dtype=np.int64)
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_samples, size=min(n, num_samples), replace=False)).astype(np.int64)


def load_samples(beton: str | Path, ids: np.ndarray, meta: BetonMetadata) -> list[Sample]:
    """Decode samples ``ids`` in one batch of a :class:`JiTLoader` with the val decoder (no flip)."""
    from jit_ffcv.checksum import bind_checksums
    from jit_ffcv.loader import JiTLoader
    from jit_ffcv.ops import FlipDecoder
    from jit_ffcv.traversal import SequentialOrder
    from writers.ffcv_api import IntDecoder

    has_index = "index" in _reader(beton).handlers
    loader = JiTLoader(
        str(beton), batch_size=len(ids), num_workers=1, order=SequentialOrder(), indices=ids, drop_last=False,
        batches_ahead=1, pin_memory=False,
        pipelines={"image": [FlipDecoder(flip_prob=0.0)], "label": [IntDecoder()],
                   "index": [IntDecoder()] if has_index else None, CHECKSUM: None},
    )
    bind_checksums(loader.pipeline_specs, loader.reader)
    (images, labels, *rest), = list(loader)
    index = np.asarray(rest[0]).reshape(-1).tolist() if has_index else [None] * len(ids)
    labels = np.asarray(labels).reshape(-1).tolist()
    return [Sample(int(i), None if x is None else int(x), int(y), meta.classes[y], np.array(image))
            for i, x, y, image in zip(ids.tolist(), index, labels, images, strict=True)]


def _check_out(out: Path) -> None:
    """The grid is a PNG in an existing folder."""
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {out}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist; create it or choose another --out")
    probe = out.parent / f".{out.name}.probe"
    try:  # before decoding anything: a folder that takes no file (read-only, /proc) fails now, in one line
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create a file in {out.parent} ({exc.strerror}); "
                         f"choose another --out") from None


def show(beton: str | Path, out: str | Path, n: int = DEFAULT_SHOW, seed: int = 0,
         indices: Sequence[int] | None = None) -> list[Sample]:
    """Save a PNG grid of samples of ``beton`` to ``out``; return the samples shown, in grid order."""
    out = Path(out)
    _check_out(out)
    meta = read_metadata(beton)
    verify_file(beton, meta)
    ids = pick_ids(int(_reader(beton).num_samples), n, seed, indices)
    samples = load_samples(beton, ids, meta)
    grid, _ = render_grid(samples)
    grid.save(out, format="PNG")
    return samples


def show_main(args: argparse.Namespace) -> int:
    """``jit-ffcv show``: save the grid and say where."""
    out = Path(args.out) if args.out else Path(Path(args.beton).name).with_suffix(".png")
    samples = show(args.beton, out, n=args.n, seed=args.seed, indices=args.indices)
    print(f"saved {len(samples)} samples of {args.beton} to {out}")
    return 0


def add_show_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jit-ffcv show``."""
    parser.add_argument("beton")
    parser.add_argument("--out", help="PNG to write (default: the beton's name with .png, in the current folder)")
    parser.add_argument("--n", type=int, default=DEFAULT_SHOW, help=f"samples to show (default {DEFAULT_SHOW})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random pick (default 0)")
    parser.add_argument("--indices", type=int, nargs="+", metavar="I",
                        help="stored sample ids to show instead of a random pick")
