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
import logging
import math
import multiprocessing
import operator
import os
import sys
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from writers.shuffle import sample_permutation
from writers import __version__
from writers.cpus import usable_cpus
from writers.encode import MODES, Encoded, encode_chunk
from writers.folder import FolderScan, find_classes, scan_split
from writers.lifecycle import signals_deferred, sigterm_raises, worker_init
from writers.lock import WriteLock
from writers.metadata import BetonMetadata, file_sha256, read_metadata, sidecar_path
from writers.output import (
    BetonExistsError, beton_name, check_output, default_beton_dir, partial_files, partial_path, remove_stale_partials,
)

log = logging.getLogger("jit_ffcv.writer")

#: Default JPEG quality: see the PSNR/size table in the README (``jit-ffcv bench --quality-table``).
DEFAULT_QUALITY = 90
CHUNK = 16
#: FFCV's page size for our betons (DatasetWriter's default); one sample must fit in a page.
PAGE_SIZE = 8 << 20
#: Largest crop: JiT trains at 256 and 512. A worker holds the upscaled source and a few copies of
#: the crop (48 MiB each at 4096 px, RGB); an unbounded size drove one worker to 23.6 GB at 100000.
MAX_IMG_SIZE = 4096
#: Largest raw crop: its 3 * size**2 bytes must fit in one FFCV page.
MAX_RAW_IMG_SIZE = math.isqrt(PAGE_SIZE // 3)


class BadImageError(RuntimeError):
    """An input image could not be decoded and ``strict`` was requested."""


def _integer(name: str, value: object, low: int, high: int | None = None, hint: str = "") -> int:
    """``value`` as a Python int in ``[low, high]`` (NumPy integers welcome, booleans refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got the boolean {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}{hint}") from None
    if number < low or (high is not None and number > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {number}{hint}")
    return number


def _validate(
    img_size: object, mode: str, quality: object, num_workers: object, limit: object = None
) -> tuple[int, int, int, int | None]:
    """Check the options before any work; return them as Python ints."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    high = MAX_RAW_IMG_SIZE if mode == "raw" else MAX_IMG_SIZE
    why = " (a raw crop must fit one 8 MiB FFCV page; use --mode jpg)" if mode == "raw" else " (memory per worker grows with its square)"
    img_size = _integer("img_size", img_size, 32, high, why)
    quality = _integer("quality", quality, 1, 100)
    num_workers = _integer("num_workers", num_workers, 0, hint=" (0 = in this process)")
    if limit is not None:
        limit = _integer("limit", limit, 1, hint=" (or None for all images)")
    return img_size, quality, num_workers, limit


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
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx, initializer=worker_init,
                             initargs=(os.getpid(),)) as pool:
        pending: deque[Future[list[Encoded]]] = deque()
        todo = iter(chunks)
        try:
            for i, chunk in enumerate(todo):
                # the first submit starts the pool: a signal must wait until it has (see signals_deferred)
                with signals_deferred() if i == 0 else nullcontext():
                    pending.append(pool.submit(encode_chunk, chunk, img_size, mode, quality))
                if len(pending) >= 4 * num_workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


class _AllocationTable:
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
        if self.count == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
        self.rows[self.count] = row
        self.count += 1

    def pop(self) -> np.void:
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


class _BetonFile:
    """Appends pre-encoded samples to a beton with FFCV's writer internals.

    FFCV's ``DatasetWriter`` runs the user's ``__getitem__`` in its own workers and
    hangs if one raises; we only borrow its header/metadata/page layout, so the
    result is byte-compatible with any FFCV 1.0.2 reader.
    """

    def __init__(self, path: Path, capacity: int, mode: str, quality: int, index_field: bool = True) -> None:
        from writers.ffcv_api import ALLOC_TABLE_TYPE, IMAGE_MODES, DatasetWriter, IntField, MemoryAllocator, RGBImageField

        self.path = path
        fields = {"image": RGBImageField(write_mode=mode, jpeg_quality=quality), "label": IntField()}
        self.index_field = index_field  # only replicas of betons written before the field lack it
        if index_field:
            fields["index"] = IntField()
        self.writer = DatasetWriter(str(path), fields, num_workers=1)
        self.writer.num_samples = capacity  # an upper bound: skipped files leave unused rows
        self.writer.prepare()
        # Unlink the /dev/shm segment now: our mapping stays valid and nothing is left behind,
        # whatever kills this process (no one else attaches to it by name).
        self.writer.metadata_sm.unlink()
        self.metadata = np.frombuffer(self.writer.metadata_sm.buf, dtype=self.writer.metadata_type)
        self.allocator = MemoryAllocator(str(path), self.writer.data_region_start, self.writer.page_size)
        self.allocator.__enter__()
        self.allocator.allocations = _AllocationTable(capacity, ALLOC_TABLE_TYPE)
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
        self.writer.finalize([self.allocator.allocations.table()])  # one "worker", one numpy table
        self.writer.metadata_sm.close()

    def abort(self) -> None:
        """Release the shared memory after a failure."""
        try:
            self.allocator.fp.close()
        finally:
            self.metadata = self.image = None
            self.writer.metadata_sm.close()


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
    return partial_path(out)


def _publish(partial: Path, out: Path, meta: BetonMetadata) -> None:
    """Give a finished beton its final name: sidecar first, then the beton, each by atomic rename.

    On any failure (disk full while the sidecar is written, ...) nothing of this write is left.
    """
    sidecar = sidecar_path(out)
    tmp = partial.with_name(partial.name + ".json")
    try:
        tmp.write_text(meta.to_json())
        os.replace(tmp, sidecar)
        try:
            os.replace(partial, out)
        except BaseException:
            sidecar.unlink(missing_ok=True)  # a sidecar must never describe a beton that is not there
            raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
        raise


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
    force: bool = False,
) -> BetonMetadata:
    """Write the samples of ``scan`` to ``out`` and its JSON sidecar; return the metadata.

    Samples are stored in ``sample_permutation(N, shuffle_seed)`` order (``None``: ImageFolder
    order), each with its ImageFolder index (position in ``scan.samples``) in the ``index`` field.

    Options and the output path are checked before any work; an existing beton is kept
    unless ``force``. The beton is written as ``.NAME.<host>-<pid>.partial`` and renamed
    only when complete, its sidecar first, so a killed writer never leaves a file that
    looks finished. One process at a time writes a given beton (:mod:`writers.lock`):
    another one (rank 0 of a second node on a shared file system) waits, then returns
    the metadata of the beton the first one published. SIGTERM cleans up like Ctrl-C.
    """
    _validate(img_size, mode, quality, num_workers, limit)
    if shuffle_seed is not None:
        sample_permutation(0, shuffle_seed)  # checks the seed before any work
    check_output(Path(out), force=force)
    return _write_locked(scan, Path(out), split=split, img_size=img_size, mode=mode, quality=quality,
                         num_workers=num_workers, strict=strict, limit=limit, progress=progress, force=force,
                         shuffle_seed=shuffle_seed)


def _write_locked(
    scan: FolderScan, out: Path, *, split: str = "train", img_size: int = 256, mode: str = "jpg",
    quality: int = DEFAULT_QUALITY, num_workers: int = 1, strict: bool = False, limit: int | None = None,
    progress: bool = True, force: bool = False, shuffle_seed: int | None = 0,
) -> BetonMetadata:
    """Write under the lock, once the output was checked; a beton found then was published meanwhile."""
    img_size, quality, num_workers, limit = _validate(img_size, mode, quality, num_workers, limit)
    with sigterm_raises(), WriteLock(out) as lock:
        remove_stale_partials(out)  # under the lock: also those of a holder that died while we waited
        if not force and out.exists():  # published by the writer we waited for
            return _written_meanwhile(out, lock.waited, img_size=img_size, mode=mode, quality=quality,
                                      classes=scan.classes)
        try:
            return _write_beton(scan, out, split=split, img_size=img_size, mode=mode, quality=quality,
                                num_workers=num_workers, strict=strict, limit=limit, progress=progress,
                                shuffle_seed=shuffle_seed)
        except BaseException:
            for path in partial_files(out):
                path.unlink(missing_ok=True)
            raise


def _written_meanwhile(out: Path, waited: bool, **wanted: object) -> BetonMetadata:
    """Metadata of the beton another writer published while this one waited for the lock."""
    meta = read_metadata(out)
    meta.check_matches(**wanted)  # type: ignore[arg-type]
    log.warning("%s was written by another process%s; using it", out, " while this one waited" if waited else "")
    return meta


def _write_beton(
    scan: FolderScan, out: Path, *, split: str, img_size: int, mode: str, quality: int, num_workers: int,
    strict: bool, limit: int | None, progress: bool, shuffle_seed: int | None,
) -> BetonMetadata:
    """The write itself, once options, output path and lock are settled."""
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
        writer_version=__version__,
        sample_order="folder" if shuffle_seed is None else "shuffled",
        shuffle_seed=shuffle_seed,
        limit=limit if limit is not None and limit < len(scan.samples) else None,  # None: the whole split
    )
    _publish(beton.path, out, meta)
    return meta


def read_payloads(beton: str | os.PathLike, limit: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """Stored image payloads (JPEG or raw bytes) and labels of a beton, in sample order (first ``limit``)."""
    from writers.ffcv_api import Reader

    reader = Reader(str(beton))
    table = reader.alloc_table
    size_of = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    ptrs = reader.metadata["f0"]["data_ptr"][:limit].tolist()
    payloads = [data[p : p + size_of[p]].tobytes() for p in ptrs]
    return payloads, np.array(reader.metadata["f1"][:limit]).reshape(-1)


def read_indices(beton: str | os.PathLike) -> np.ndarray | None:
    """ImageFolder index of every stored sample (its ``index`` field), or None for betons written without it."""
    from writers.ffcv_api import Reader

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
    """Scan ``DATA/split`` (val uses train's class list) and write it to ``out``.

    Options and output are checked before the scan, which takes minutes on a large
    dataset on a network file system (and another node may publish the beton meanwhile:
    :func:`write_beton` then uses it).
    """
    _validate(kwargs.get("img_size", 256), kwargs.get("mode", "jpg"), kwargs.get("quality", DEFAULT_QUALITY),  # type: ignore[arg-type]
              kwargs.get("num_workers", 1), kwargs.get("limit"))
    if kwargs.get("shuffle_seed", 0) is not None:
        sample_permutation(0, kwargs.get("shuffle_seed", 0))  # type: ignore[arg-type]  # checks the seed
    check_output(Path(out), force=bool(kwargs.get("force", False)))
    data_path = Path(data_path)
    classes = find_classes(data_path / "train") if split != "train" else None
    scan = scan_split(data_path / split, classes=classes)
    return _write_locked(scan, Path(out), split=split, **kwargs)  # type: ignore[arg-type]


def summary(meta: BetonMetadata, out: str | os.PathLike) -> str:
    """One-paragraph human summary of a finished write."""
    lines = [
        f"wrote {meta.num_samples} images to {out} in {meta.seconds:.1f} s "
        f"({meta.images_per_second:.0f} img/s, {meta.num_workers} workers, "
        f"{meta.payload_bytes / max(meta.num_samples, 1) / 1024:.1f} KiB/image stored, "
        f"{meta.size_bytes / 2**20:.1f} MiB file)",
    ]
    if meta.skipped:
        lines.append(f"skipped {len(meta.skipped)} unreadable file(s), listed in {sidecar_path(out)}:")
        lines += [f"  {s['path']}: {s['error']}" for s in meta.skipped[:10]]
    if meta.ignored:
        lines.append(f"ignored {len(meta.ignored)} non-image file(s) (by extension, as ImageFolder does)")
    return "\n".join(lines)


#: Splits ``jit-ffcv write`` knows, in the order it writes them.
SPLITS = ("train", "val")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``write`` command's options (shared by ``python -m writers.beton`` and ``jit-ffcv write``)."""
    from writers.dryrun import DEFAULT_SAMPLE

    parser.add_argument("--data-path", required=True, help="dataset root holding train/ (and val/)")
    parser.add_argument("--split", nargs="+", choices=SPLITS, default=None,
                        help="split(s) to write (default: train, and val when DATA/val exists; train alone with --out)")
    parser.add_argument("--img-size", type=int, default=256,
                        help=f"crop size, 32 to {MAX_IMG_SIZE} ({MAX_RAW_IMG_SIZE} in raw mode)")
    parser.add_argument("--mode", default="jpg", choices=MODES)
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality (jpg mode)")
    parser.add_argument("--num-workers", type=int, default=usable_cpus(),
                        help="worker processes (default: the CPUs this process may use)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out-dir", default=None,
                       help="folder of the betons, named as JiTDataModule looks for them, e.g. train_256_jpg90.beton "
                            "(default: DATA/ffcv)")
    where.add_argument("--out", default=None, help="output FILE.beton (one split only)")
    parser.add_argument("--strict", action="store_true", help="fail on the first unreadable image")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N images of each split")
    parser.add_argument("--shuffle-seed", type=int, default=0, help="seed of the stored sample order (mixes classes)")
    parser.add_argument("--no-shuffle", action="store_true", help="store samples in ImageFolder (class-sorted) order")
    parser.add_argument("--force", action="store_true", help="overwrite existing betons")
    parser.add_argument("--dry-run", action="store_true",
                        help="print counts, skipped files, estimated size and write time; write nothing")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                        help=f"with --dry-run: files per split cropped and encoded for the estimates "
                             f"(default {DEFAULT_SAMPLE})")
    return parser


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    """Parse the writer's command line."""
    return add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)


def splits_to_write(data_path: str | os.PathLike, asked: Sequence[str] | None, one_file: bool = False) -> list[str]:
    """The splits asked for, in write order; by default train, and val when ``DATA/val`` is a folder.

    With ``one_file`` (``--out FILE``) the default is train alone, as before ``--split`` took several.
    """
    if asked:
        return [split for split in SPLITS if split in asked]
    return ["train"] + (["val"] if (Path(data_path) / "val").is_dir() and not one_file else [])


def outputs(args: argparse.Namespace) -> dict[str, Path]:
    """Output beton of every split to write: ``--out`` (one split), else ``--out-dir``/default names."""
    splits = splits_to_write(args.data_path, args.split, one_file=args.out is not None)
    if args.out is not None:
        if len(splits) > 1:
            raise ValueError(f"--out names one file but {len(splits)} splits would be written ({' '.join(splits)}); "
                             f"pass --split {splits[0]}, or --out-dir DIR for one beton per split")
        return {splits[0]: Path(args.out)}
    folder = Path(args.out_dir) if args.out_dir is not None else default_beton_dir(args.data_path)
    return {split: folder / beton_name(split, args.img_size, args.mode, args.quality) for split in splits}


def _check_outputs(targets: dict[str, Path], force: bool) -> None:
    """Check every output before any split is written; an existing one names the splits still missing."""
    for split, out in targets.items():
        try:
            check_output(out, force=force)
        except BetonExistsError as exc:
            missing = [s for s, path in targets.items() if not path.exists()]
            if not missing:
                raise
            raise BetonExistsError(f"{exc}; or pass --split {' '.join(missing)} to write only the missing "
                                   f"split{'s' if len(missing) > 1 else ''}") from None


def main(args: argparse.Namespace) -> int:
    """Run the writer for parsed ``args``: every split in turn (or only plan them with ``--dry-run``)."""
    _validate(args.img_size, args.mode, args.quality, args.num_workers, args.limit)
    targets = outputs(args)
    if args.dry_run:
        return _dry_run(args, targets)
    _check_outputs(targets, args.force)
    for split, out in targets.items():
        meta = write_split(
            args.data_path,
            split,
            out,
            img_size=args.img_size,
            mode=args.mode,
            quality=args.quality,
            num_workers=args.num_workers,
            strict=args.strict,
            limit=args.limit,
            shuffle_seed=None if args.no_shuffle else args.shuffle_seed,
            force=args.force,
        )
        print(summary(meta, out), flush=True)
    return 0


def _dry_run(args: argparse.Namespace, targets: dict[str, Path]) -> int:
    """Print what writing ``targets`` would do; create, write or delete nothing."""
    from writers.dryrun import plan_split, report

    sample = _integer("sample", args.sample, 1, hint=" (files cropped per split for --dry-run's estimates)")
    data_path = Path(args.data_path)
    for split, out in targets.items():
        classes = find_classes(data_path / "train") if split != "train" else None
        scan = scan_split(data_path / split, classes=classes)
        plan = plan_split(scan, split, out, img_size=args.img_size, mode=args.mode, quality=args.quality,
                          num_workers=args.num_workers, limit=args.limit, sample=sample)
        print(report(plan, args.num_workers), flush=True)
    print("dry run: nothing was written")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
