"""Write an ImageFolder split into an FFCV ``.beton`` of pre-cropped images.

Worker processes decode, ADM-crop and encode images (:mod:`writers.encode`); the
main process receives them in a seeded random permutation of ImageFolder order
(so every page mixes classes) and appends them to the beton through FFCV's own
page allocator, so the file is a plain FFCV 1.0.2 beton with fields ``image``
(RGB), ``label`` (int) and ``index`` (the sample's ImageFolder index). Unreadable
files are skipped and reported (or fail the run with ``strict``), the output appears under its final
name only once complete, and a JSON sidecar records how it was made.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

import jit_ffcv
from jit_ffcv.mixing import sample_permutation
from writers.encode import MODES, Encoded, encode_chunk
from writers.folder import FolderScan, find_classes, scan_split
from writers.metadata import BetonMetadata, file_sha256, sidecar_path

#: Default JPEG quality: see the PSNR/size table in the README (``jit-ffcv bench --quality-table``).
DEFAULT_QUALITY = 90
CHUNK = 16


class BadImageError(RuntimeError):
    """An input image could not be decoded and ``strict`` was requested."""


def _validate(img_size: int, mode: str, quality: int, num_workers: int, limit: int | None = None) -> None:
    if not isinstance(img_size, int) or img_size < 32:
        raise ValueError(f"img_size must be an integer >= 32, got {img_size!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0 = in this process), got {num_workers!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or None for all images), got {limit!r}")


def _encoded_in_order(
    tasks: Sequence[tuple[int, str, int]], img_size: int, mode: str, quality: int, num_workers: int
) -> Iterator[Encoded]:
    """Yield encoded samples in task order, computed by ``num_workers`` processes.

    At most ``4 * num_workers`` chunks are in flight, so memory stays bounded
    however large the split; a crashed worker raises instead of hanging.
    """
    chunks = [tasks[i : i + CHUNK] for i in range(0, len(tasks), CHUNK)]
    if num_workers == 0:
        for chunk in chunks:
            yield from encode_chunk(chunk, img_size, mode, quality)
        return
    # fork: workers start instantly and never re-import the caller's script (spawn would
    # re-run an unguarded one); they only use Pillow/NumPy, so inherited threads are harmless.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx) as pool:
        pending: deque[Future[list[Encoded]]] = deque()
        todo = iter(chunks)
        try:
            for chunk in todo:
                pending.append(pool.submit(encode_chunk, chunk, img_size, mode, quality))
                if len(pending) >= 4 * num_workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


class _BetonFile:
    """Appends pre-encoded samples to a beton with FFCV's writer internals.

    FFCV's ``DatasetWriter`` runs the user's ``__getitem__`` in its own workers and
    hangs if one raises; we only borrow its header/metadata/page layout, so the
    result is byte-compatible with any FFCV 1.0.2 reader.
    """

    def __init__(self, path: Path, capacity: int, mode: str, quality: int, index_field: bool = True) -> None:
        from jit_ffcv._ffcv import IMAGE_MODES, DatasetWriter, IntField, MemoryAllocator, RGBImageField

        self.path = path
        fields = {"image": RGBImageField(write_mode=mode, jpeg_quality=quality), "label": IntField()}
        self.index_field = index_field  # only replicas of betons written before the field lack it
        if index_field:
            fields["index"] = IntField()
        self.writer = DatasetWriter(str(path), fields, num_workers=1)
        self.writer.num_samples = capacity  # an upper bound: skipped files leave unused rows
        self.writer.prepare()
        self.metadata = np.frombuffer(self.writer.metadata_sm.buf, dtype=self.writer.metadata_type)
        self.allocator = MemoryAllocator(str(path), self.writer.data_region_start, self.writer.page_size)
        self.allocator.__enter__()
        self.image = self.metadata["f0"]
        self.mode_code = IMAGE_MODES[mode]
        self.count = 0
        self.payload_bytes = 0

    def append(self, payload: bytes, label: int, img_size: int, index: int | None = None) -> None:
        """Store one sample; ``index`` is its ImageFolder index (required with an ``index`` field)."""
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
        self.metadata["f1"][i] = label
        if index is not None:
            self.metadata["f2"][i] = index
        self.count += 1
        self.payload_bytes += len(payload)

    def close(self) -> None:
        """Flush the last page, write metadata, allocation table and header."""
        self.allocator.__exit__(None, None, None)
        self.writer.header["num_samples"] = self.count
        del self.metadata, self.image  # release the views before the shared memory is closed
        self.writer.finalize(self.allocator.allocations)
        self.writer.metadata_sm.close()
        self.writer.metadata_sm.unlink()

    def abort(self) -> None:
        """Release the shared memory after a failure."""
        try:
            self.allocator.fp.close()
        finally:
            self.metadata = self.image = None
            self.writer.metadata_sm.close()
            self.writer.metadata_sm.unlink()


@contextmanager
def _partial_beton(out: Path, capacity: int, mode: str, quality: int, index_field: bool = True) -> Iterator[_BetonFile]:
    """A beton being written at ``out``'s hidden partial path: closed on success, deleted on failure."""
    partial = _partial_path(out)
    try:
        beton = _BetonFile(partial, capacity, mode, quality, index_field)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:
        yield beton
        beton.close()
    except BaseException:
        beton.abort()
        partial.unlink(missing_ok=True)
        raise


def _partial_path(out: Path) -> Path:
    """Hidden temporary name of ``out`` while it is written, unique per host and process."""
    return out.with_name(f".{out.name}.{socket.gethostname()}-{os.getpid()}.partial")


def _publish(partial: Path, out: Path, meta: BetonMetadata) -> None:
    """Give a finished beton its final name: sidecar first, then the beton, each by atomic rename."""
    sidecar = sidecar_path(out)
    tmp = partial.with_name(partial.name + ".json")
    tmp.write_text(meta.to_json())
    os.replace(tmp, sidecar)
    os.replace(partial, out)


def write_beton(
    scan: FolderScan,
    out: str | os.PathLike,
    *,
    split: str = "train",
    img_size: int = 256,
    mode: str = "jpg",
    quality: int = DEFAULT_QUALITY,
    num_workers: int = 1,
    strict: bool = False,
    limit: int | None = None,
    progress: bool = True,
    shuffle_seed: int | None = 0,
) -> BetonMetadata:
    """Write the samples of ``scan`` to ``out`` and its JSON sidecar; return the metadata.

    Samples are stored in ``sample_permutation(N, shuffle_seed)`` order (``None``: ImageFolder
    order), each with its ImageFolder index (position in ``scan.samples``) in the ``index`` field.

    The beton is written as ``.NAME.<host>-<pid>.partial`` and renamed only when
    complete, its sidecar first, so a killed writer never leaves a file that looks
    finished, and two writers of the same beton (rank 0 of two nodes sharing a file
    system) never write into the same file.
    """
    _validate(img_size, mode, quality, num_workers, limit)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = scan.samples[:limit] if limit is not None else scan.samples
    tasks = [(i, path, label) for i, (path, label) in enumerate(samples)]
    if shuffle_seed is not None:
        tasks = [tasks[i] for i in sample_permutation(len(tasks), shuffle_seed).tolist()]
    skipped: list[dict[str, str]] = []
    counts = [0] * len(scan.classes)
    with _partial_beton(out, max(len(tasks), 1), mode, quality) as beton:
        start = time.perf_counter()  # after FFCV's import and the file header: time spent on images
        desc = f"write {split} {img_size}px {mode}"
        with tqdm(total=len(tasks), unit="img", desc=desc, disable=not progress) as bar:
            for enc in _encoded_in_order(tasks, img_size, mode, quality, num_workers):
                bar.update(1)
                if enc.payload is None:
                    path = samples[enc.index][0]
                    if strict:
                        raise BadImageError(f"cannot decode {path}: {enc.error} (drop --strict to skip and report it)")
                    skipped.append({"path": path, "error": enc.error or ""})
                    continue
                beton.append(enc.payload, enc.label, img_size, enc.index)
                counts[enc.label] += 1
        if beton.count == 0 and tasks:
            raise BadImageError(f"none of the {len(tasks)} images under {scan.root} could be decoded")
    seconds = time.perf_counter() - start
    meta = BetonMetadata(
        split=split,
        img_size=img_size,
        mode=mode,
        quality=quality if mode == "jpg" else None,
        classes=list(scan.classes),
        class_counts=counts,
        num_samples=beton.count,
        source=str(Path(scan.root).resolve()),
        skipped=skipped,
        ignored=list(scan.ignored),
        sha256=file_sha256(beton.path),
        size_bytes=beton.path.stat().st_size,
        payload_bytes=beton.payload_bytes,
        seconds=round(seconds, 3),
        images_per_second=round(len(tasks) / seconds, 1) if seconds > 0 else 0.0,
        num_workers=num_workers,
        writer_version=jit_ffcv.__version__,
        sample_order="folder" if shuffle_seed is None else "shuffled",
        shuffle_seed=shuffle_seed,
    )
    _publish(beton.path, out, meta)
    return meta


def read_payloads(beton: str | os.PathLike, limit: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """Stored image payloads (JPEG or raw bytes) and labels of a beton, in sample order (first ``limit``)."""
    from jit_ffcv._ffcv import Reader

    reader = Reader(str(beton))
    table = reader.alloc_table
    size_of = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    ptrs = reader.metadata["f0"]["data_ptr"][:limit].tolist()
    payloads = [data[p : p + size_of[p]].tobytes() for p in ptrs]
    return payloads, np.array(reader.metadata["f1"][:limit]).reshape(-1)


def read_indices(beton: str | os.PathLike) -> np.ndarray | None:
    """ImageFolder index of every stored sample (its ``index`` field), or None for betons written without it."""
    from jit_ffcv._ffcv import Reader

    reader = Reader(str(beton))
    names = list(reader.handlers)
    if "index" not in names:
        return None
    return np.array(reader.metadata[f"f{names.index('index')}"]).reshape(-1).astype(np.int64)


def replicate_beton(src: str | os.PathLike, out: str | os.PathLike, times: int) -> BetonMetadata:
    """Write ``out`` holding ``src``'s samples ``times`` times over (for benchmarks).

    Copies the stored payloads, so a large beton is made in seconds without
    decoding or cropping again; the sidecar is ``src``'s with counts scaled.
    """
    from writers.metadata import read_metadata

    if times < 1:
        raise ValueError(f"times must be >= 1, got {times!r}")
    meta = read_metadata(src)
    payloads, labels = read_payloads(src)
    indices = read_indices(src)
    index_list = [None] * len(payloads) if indices is None else indices.tolist()
    out = Path(out)
    quality = meta.quality or DEFAULT_QUALITY
    with _partial_beton(out, len(payloads) * times, meta.mode, quality, indices is not None) as beton:
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
    _publish(partial, out, meta)
    return meta


def write_split(
    data_path: str | os.PathLike, split: str, out: str | os.PathLike, **kwargs: object
) -> BetonMetadata:
    """Scan ``DATA/split`` (val uses train's class list) and write it to ``out``."""
    data_path = Path(data_path)
    classes = find_classes(data_path / "train") if split != "train" else None
    scan = scan_split(data_path / split, classes=classes)
    return write_beton(scan, out, split=split, **kwargs)  # type: ignore[arg-type]


def summary(meta: BetonMetadata, out: str | os.PathLike) -> str:
    """One-paragraph human summary of a finished write."""
    lines = [
        f"wrote {meta.num_samples} images to {out} in {meta.seconds:.1f} s "
        f"({meta.images_per_second:.0f} img/s, {meta.num_workers} workers, "
        f"{meta.size_bytes / max(meta.num_samples, 1) / 1024:.1f} KiB/image)",
    ]
    if meta.skipped:
        lines.append(f"skipped {len(meta.skipped)} unreadable file(s), listed in {sidecar_path(out)}:")
        lines += [f"  {s['path']}: {s['error']}" for s in meta.skipped[:10]]
    if meta.ignored:
        lines.append(f"ignored {len(meta.ignored)} non-image file(s) (by extension, as ImageFolder does)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``write`` command's options (shared by ``python -m writers.beton`` and ``jit-ffcv write``)."""
    parser.add_argument("--data-path", required=True, help="dataset root holding train/ (and val/)")
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--mode", default="jpg", choices=MODES)
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality (jpg mode)")
    parser.add_argument("--num-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", required=True, help="output FILE.beton")
    parser.add_argument("--strict", action="store_true", help="fail on the first unreadable image")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N images (dry run)")
    parser.add_argument("--shuffle-seed", type=int, default=0, help="seed of the stored sample order (mixes classes)")
    parser.add_argument("--no-shuffle", action="store_true", help="store samples in ImageFolder (class-sorted) order")
    return parser


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    """Parse the writer's command line."""
    return add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Run the writer for parsed ``args``; print the summary."""
    meta = write_split(
        args.data_path,
        args.split,
        args.out,
        img_size=args.img_size,
        mode=args.mode,
        quality=args.quality,
        num_workers=args.num_workers,
        strict=args.strict,
        limit=args.limit,
        shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
    )
    print(summary(meta, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
