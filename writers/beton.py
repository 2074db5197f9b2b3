"""Write an ImageFolder split into an FFCV ``.beton`` of pre-cropped images: the write pipeline.

Worker processes decode, ADM-crop and encode images (:mod:`writers.pool`, :mod:`writers.encode`); the
main process receives them in a seeded random permutation of ImageFolder order (so every page mixes
classes) and appends them to the beton through FFCV's own page allocator (:mod:`writers.beton_file`),
so the file is a plain FFCV 1.0.2 beton with fields ``image`` (RGB), ``label`` (int) and ``index`` (the
sample's ImageFolder index). Unreadable files are skipped and reported (or fail the run with ``strict``),
the output appears under its final name only once complete (:mod:`writers.publish`), and a JSON sidecar
records how it was made.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from tqdm import tqdm

from writers import __version__
from writers.beton_file import partial_beton
from writers.folder import FolderScan, find_classes, scan_split
from writers.lifecycle import check_signals, critical, signals_guarded
from writers.lock import WriteLock
from writers.metadata import BetonMetadata, file_sha256, read_metadata, sidecar_path
from writers.options import DEFAULT_QUALITY, validate_options
from writers.output import check_output, partial_files, remove_quietly, remove_stale_partials
from writers.pool import encoded_in_order
from writers.publish import publish
from writers.readers import read_indices, read_payloads
from writers.replicate import replicate_beton
from writers.shuffle import sample_permutation

log = logging.getLogger("jit_ffcv.writer")

#: Names other modules import from here (kept when the module was split): the bench and tests use them.
__all__ = ["DEFAULT_QUALITY", "BadImageError", "partial_beton", "publish", "read_indices", "read_payloads",
           "replicate_beton", "scan_splits", "write_beton", "write_split"]


class BadImageError(RuntimeError):
    """An input image could not be decoded and ``strict`` was requested."""


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
    validate_options(img_size, mode, quality, num_workers, limit)
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
    img_size, quality, num_workers, limit = validate_options(img_size, mode, quality, num_workers, limit)
    with signals_guarded(), WriteLock(out) as lock:
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
                remove_quietly(path, "partial file")
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
    with partial_beton(out, max(len(tasks), 1), mode, quality) as beton:
        start = time.perf_counter()  # after FFCV's import and the file header: time spent on images
        desc = f"write {split} {img_size}px {mode}"
        with _progress_bar(len(tasks), desc, progress) as bar, \
                closing(encoded_in_order(tasks, img_size, mode, quality, num_workers)) as stream:
            for enc in stream:  # closing(): on any error its workers are killed before the cleanup below runs
                bar.update(1)
                if enc.payload is None:
                    skipped.append(_skip(samples[enc.index][0], enc.error or "", strict))
                    continue
                beton.append(enc.payload, enc.label, img_size, enc.index, enc.checksum)
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
    check_signals()  # the last safe point: a signal received by now, by any thread, stops the write unpublished
    publish(beton.path, out, meta)
    _report_skipped(skipped, split, out)
    return meta


@contextmanager
def _progress_bar(total: int, desc: str, enabled: bool) -> Iterator[tqdm]:
    """A tqdm bar whose last line a signal cannot cut short, so ``jit-ffcv: interrupted`` gets a line of its own."""
    bar = tqdm(total=total, unit="img", desc=desc, disable=not enabled)
    try:
        yield bar
    finally:
        with critical():  # a signal here is raised once the bar's closing newline is written
            bar.close()


def _skip(path: str, error: str, strict: bool) -> dict[str, str]:
    """The sidecar's record of a file that could not be decoded (``strict``: stop the write instead)."""
    if strict:
        raise BadImageError(f"cannot decode {path}: {error} (drop --strict to skip and report it)")
    return {"path": path, "error": error}


def scan_splits(data_path: str | os.PathLike, splits: Sequence[str]) -> dict[str, FolderScan]:
    """Scan every split of ``data_path`` (val with train's class list): all layout errors before any image is read."""
    data_path = Path(data_path)
    train_classes = find_classes(data_path / "train") if any(split != "train" for split in splits) else None
    return {split: scan_split(data_path / split, classes=None if split == "train" else train_classes)
            for split in splits}


def write_split(
    data_path: str | os.PathLike, split: str, out: str | os.PathLike, *, scan: FolderScan | None = None,
    **kwargs: object,
) -> BetonMetadata:
    """Scan ``DATA/split`` (val uses train's class list) and write it to ``out``; ``scan``: already scanned.

    Options, the split's folder and the output are checked before the scan, which takes minutes
    on a large dataset on a network file system (and another node may publish the beton
    meanwhile: :func:`write_beton` then uses it); nothing is created when a check fails.
    """
    validate_options(kwargs.get("img_size", 256), kwargs.get("mode", "jpg"),  # type: ignore[arg-type]
                     kwargs.get("quality", DEFAULT_QUALITY), kwargs.get("num_workers", 1), kwargs.get("limit"))
    if kwargs.get("shuffle_seed", 0) is not None:
        sample_permutation(0, kwargs.get("shuffle_seed", 0))  # type: ignore[arg-type]  # checks the seed
    data_path = Path(data_path)
    if scan is None:
        for folder in {data_path / "train", data_path / split}:
            find_classes(folder)  # a mistyped path fails here, before check_output creates the output folder
    check_output(Path(out), force=bool(kwargs.get("force", False)))
    if scan is None:
        scan = scan_splits(data_path, [split])[split]
    return _write_locked(scan, Path(out), split=split, **kwargs)  # type: ignore[arg-type]


def _report_skipped(skipped: list[dict[str, str]], split: str, out: Path) -> None:
    """Log the files a write skipped, with their reasons (``prepare_data`` shows them as ``jit-ffcv write`` does)."""
    if not skipped:
        return
    listed = [f"  {s['path']}: {s['error']}" for s in skipped[:10]]
    more = [f"  ... and {len(skipped) - 10} more"] if len(skipped) > 10 else []
    log.warning("skipped %d unreadable file(s) of %s, all listed in %s:\n%s", len(skipped), split,
                sidecar_path(out), "\n".join(listed + more))
