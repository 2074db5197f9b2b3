"""``jit-ffcv write --dry-run``: what a write would do, with nothing written.

For each split: the images it would read, its classes, the files it ignores (extension) and
the files it would skip, an estimated beton size and write time. Every file gets a cheap header
check (a regular file that Pillow can identify: catches empty files, non-images, FIFOs); a
seeded random sample of ``sample`` files is cropped and encoded in this process, which
measures the bytes and seconds per image and also finds files that fail only when decoded
(truncated JPEGs). When the sample covers the whole split every figure is exact; raw mode's
size is exact arithmetic from the count of good files (FFCV's page layout).
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from writers.encode import UNIDENTIFIED, encode_file
from writers.folder import FolderScan
from writers.options import PAGE_SIZE
from writers.pool import ordered_results

#: Files cropped and encoded per split by default to estimate size and time.
DEFAULT_SAMPLE = 100


@dataclass
class SplitPlan:
    """What writing one split would do."""

    split: str
    out: Path
    out_exists: bool
    images: int  # image-named files the write would read (after --limit)
    classes: int
    ignored: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): certain to be skipped
    sampled: int = 0  # files cropped and encoded
    sample_failed: int = 0  # of them, failed only when decoded (counted in ``skipped`` too)
    payload_bytes: float = 0.0  # mean stored bytes per good sampled image
    seconds_per_image: float = 0.0  # mean crop + encode time in one process
    expected_samples: int = 0
    size_bytes: int = 0
    exact: bool = False  # the sample covered every file that passed the header check
    write_seconds: float = 0.0  # with ``num_workers`` processes, assuming linear scaling
    startup_seconds: float = 0.0  # importing FFCV (timed here, or as it was in this process) and hashing the file


def header_error(path: str) -> str | None:
    """Why ``path`` cannot be an image, from its header alone (None: it looks like one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "NotARegularFileError: not a regular file"
        try:
            with Image.open(f) as img:
                width, height = img.size
        except UnidentifiedImageError:
            return f"UnidentifiedImageError: {UNIDENTIFIED}"
        except Exception as exc:  # noqa: BLE001 - whatever Pillow raises, the writer would skip the file
            return f"{type(exc).__name__}: {exc}"
    return None if width > 0 and height > 0 else f"empty image ({width}x{height})"


def _header_errors(paths: Sequence[str], num_workers: int) -> list[str | None]:
    """:func:`header_error` of every path, in order, with ``num_workers`` processes (0: here)."""
    jobs = [(paths[i : i + 256],) for i in range(0, len(paths), 256)]
    return list(ordered_results(_header_error_chunk, jobs, num_workers))


def _header_error_chunk(paths: Sequence[str]) -> list[str | None]:
    """:func:`header_error` of each path (one worker's job)."""
    return [header_error(p) for p in paths]


#: SHA-256 of the finished beton, for the sidecar (one core, a conservative figure).
HASH_BYTES_PER_SECOND = 400e6
_import_seconds: list[float] = []


def ffcv_import_seconds() -> float:
    """Seconds this process took to import FFCV (through the door), which every write pays once at its start."""
    if not _import_seconds:
        start = time.perf_counter()
        import writers.ffcv_api  # noqa: F401

        _import_seconds.append(time.perf_counter() - start)
    return _import_seconds[0]


def beton_size(capacity: int, count: int, payload_bytes: float, mode: str, quality: int) -> int:
    """Size of a beton of ``count`` samples of ``payload_bytes`` each, with ``capacity`` metadata rows.

    FFCV's layout: header, field descriptors and metadata rows (one per file read, skipped ones
    included), padded to a page; whole 8 MiB pages, each holding as many samples as fit; an
    allocation table with one row per sample. Exact for raw mode (every payload has one size).
    """
    from writers.ffcv_api import ALLOC_TABLE_TYPE, FieldDescType, HeaderType, IntField, RGBImageField, get_metadata_type

    fields = [RGBImageField(write_mode=mode, jpeg_quality=quality), IntField(), IntField()]
    head = HeaderType.itemsize + len(fields) * FieldDescType.itemsize + capacity * get_metadata_type(fields).itemsize
    if count == 0:
        return head
    per_page = max(1, int(PAGE_SIZE // max(payload_bytes, 1)))
    pages = math.ceil(count / per_page)
    return math.ceil(head / PAGE_SIZE) * PAGE_SIZE + pages * PAGE_SIZE + count * ALLOC_TABLE_TYPE.itemsize


def plan_split(
    scan: FolderScan, split: str, out: Path, *, img_size: int, mode: str, quality: int, num_workers: int,
    limit: int | None, sample: int = DEFAULT_SAMPLE, seed: int = 0,
) -> SplitPlan:
    """Check every file's header, crop and encode a random sample, estimate the beton; write nothing."""
    ffcv_import_seconds()  # first: later steps import FFCV too
    samples = scan.samples[:limit] if limit is not None else scan.samples
    paths = [path for path, _ in samples]
    plan = SplitPlan(split=split, out=out, out_exists=out.exists(), images=len(paths),
                     classes=len(scan.classes), ignored=list(scan.ignored))
    errors = _header_errors(paths, num_workers)
    plan.skipped = [(p, e) for p, e in zip(paths, errors, strict=True) if e is not None]
    readable = [i for i, e in enumerate(errors) if e is None]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(readable, size=min(sample, len(readable)), replace=False).tolist())
    sizes: list[int] = []
    start = time.perf_counter()
    for i in chosen:
        enc = encode_file(i, paths[i], samples[i][1], img_size, mode, quality)
        if enc.payload is None:
            plan.skipped.append((paths[i], enc.error or ""))
        else:
            sizes.append(len(enc.payload))
    seconds = time.perf_counter() - start
    plan.skipped.sort()
    plan.sampled = len(chosen)
    plan.sample_failed = len(chosen) - len(sizes)
    plan.exact = len(chosen) == len(readable)
    plan.payload_bytes = float(np.mean(sizes)) if sizes else 0.0
    plan.seconds_per_image = seconds / len(chosen) if chosen else 0.0
    good_fraction = len(sizes) / len(chosen) if chosen else 0.0
    plan.expected_samples = round(len(readable) * good_fraction)
    plan.size_bytes = beton_size(len(paths), plan.expected_samples, plan.payload_bytes, mode, quality)
    plan.write_seconds = plan.seconds_per_image * len(paths) / max(num_workers, 1)
    plan.startup_seconds = ffcv_import_seconds() + plan.size_bytes / HASH_BYTES_PER_SECOND
    return plan


def report(plan: SplitPlan, num_workers: int) -> str:
    """Human text of a plan: counts, skipped files with reasons, estimates and how they were made."""
    readable = plan.images - len(plan.skipped) + plan.sample_failed
    how = ("exact: every file was cropped and encoded" if plan.exact else
           f"estimated from {plan.sampled} random files of {readable} cropped and encoded; files that fail only "
           f"when decoded (truncated) are listed above for the sample only, the write finds the others")
    lines = [
        f"{plan.split}: {plan.images} images in {plan.classes} classes -> {plan.out}"
        f"{' (exists: the write needs --force)' if plan.out_exists else ''}",
        f"  ignored (not an image extension): {len(plan.ignored)}",
        f"  skipped (unreadable): {len(plan.skipped)}",
        *[f"    {path}: {reason}" for path, reason in plan.skipped[:20]],
        *([f"    ... and {len(plan.skipped) - 20} more"] if len(plan.skipped) > 20 else []),
        f"  samples: {plan.expected_samples}  ({how})",
        f"  size: {plan.size_bytes:,} bytes = {plan.size_bytes / 2**20:,.1f} MiB "
        f"({plan.payload_bytes / 1024:.1f} KiB per image stored, in 8 MiB pages)",
        f"  write time: {_duration(plan.write_seconds + plan.startup_seconds)} with {max(num_workers, 1)} worker(s): "
        f"{_duration(plan.startup_seconds)} start-up (FFCV's import as timed here, the file's checksum) + "
        f"{_duration(plan.write_seconds)} of images "
        f"({plan.seconds_per_image * 1000:.1f} ms per image in one process, assuming linear scaling over workers)",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``1.3 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
