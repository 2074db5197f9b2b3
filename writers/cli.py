"""The ``write`` command (``jit-ffcv write``, ``python -m writers.cli``): options, outputs, dry run, summary."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from writers.beton import scan_splits, write_split
from writers.cpus import usable_cpus
from writers.dryrun import DEFAULT_SAMPLE, plan_split, report
from writers.encode import MODES
from writers.folder import find_classes
from writers.metadata import BetonMetadata, sidecar_path
from writers.options import CHUNK, DEFAULT_QUALITY, MAX_IMG_SIZE, MAX_RAW_IMG_SIZE, integer_option, validate_options
from writers.output import BetonExistsError, beton_name, check_output, default_beton_dir

log = logging.getLogger("jit_ffcv.writer")

#: Splits ``jit-ffcv write`` knows, in the order it writes them.
SPLITS = ("train", "val")


def summary(meta: BetonMetadata, out: str | os.PathLike) -> str:
    """One-paragraph human summary of a finished write."""
    lines = [
        f"wrote {meta.num_samples} images to {out} in {meta.seconds:.1f} s "
        f"({meta.images_per_second:.0f} img/s, {meta.num_workers} workers, "
        f"{meta.payload_bytes / max(meta.num_samples, 1) / 1024:.1f} KiB/image payload, "
        f"{meta.size_bytes / 2**20:.1f} MiB file)",
    ]
    if meta.skipped:
        lines.append(f"skipped {len(meta.skipped)} unreadable file(s): see the warning above and {sidecar_path(out)}")
    if meta.ignored:
        lines.append(f"ignored {len(meta.ignored)} non-image file(s) (by extension, as ImageFolder does)")
    return "\n".join(lines)


class _DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default (those that have one: not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``write`` command's options (``python -m writers.cli``, ``jit-ffcv write``); --help shows defaults."""
    parser.formatter_class = _DefaultsFormatter
    parser.add_argument("--data-path", required=True, help="dataset root holding train/ (and val/)")
    parser.add_argument("--split", nargs="+", choices=SPLITS, default=None,
                        help="split(s) to write (default: train, and val when DATA/val exists; train alone with --out)")
    parser.add_argument("--img-size", type=int, default=256,
                        help=f"crop size, 32 to {MAX_IMG_SIZE} ({MAX_RAW_IMG_SIZE} in raw mode)")
    parser.add_argument("--mode", default="jpg", choices=MODES, help="stored image format: JPEG, or raw RGB pixels")
    parser.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality (jpg mode)")
    parser.add_argument("--num-workers", type=int, default=usable_cpus(),
                        help=f"worker processes (default: {usable_cpus()}, the CPUs this process may use; "
                             f"capped at them and at the work)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out-dir", default=None,
                       help="folder of the betons, named as JiTDataModule looks for them, e.g. train_256_jpg90.beton "
                            "(default: DATA/ffcv)")
    where.add_argument("--out", default=None, help="output FILE.beton (one split only)")
    parser.add_argument("--strict", action="store_true", help="fail on the first unreadable image")
    parser.add_argument("--limit", type=int, default=None,
                        help="write only the first N images of each split (default: every image)")
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
    parser = argparse.ArgumentParser(description="Write ImageFolder splits to FFCV .betons.")
    return add_arguments(parser).parse_args(argv)


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


def check_outputs(targets: dict[str, Path], force: bool) -> None:
    """Check every output before any split is written; an existing one names the splits still missing."""
    for out in targets.values():
        try:
            check_output(out, force=force, create=False, force_hint="--force")  # created when its split is written
        except BetonExistsError as exc:
            missing = [s for s, path in targets.items() if not path.exists()]
            if not missing:
                raise
            raise BetonExistsError(f"{exc}; or pass --split {' '.join(missing)} to write only the missing "
                                   f"split{'s' if len(missing) > 1 else ''}") from None


def capped_workers(requested: int, images: int) -> tuple[int, str | None]:
    """Worker processes worth starting for ``images`` images, and a one-line note when fewer than ``requested``."""
    chunks = max(1, math.ceil(images / CHUNK))
    cpus = usable_cpus()
    workers = min(requested, cpus, chunks)
    if workers >= requested:
        return requested, None
    why = "the CPUs this process may use" if workers == cpus else f"{images} images make {chunks} chunk(s) of {CHUNK}"
    return workers, f"--num-workers {requested}: using {workers} ({why})"


def main(args: argparse.Namespace) -> int:
    """Run the writer for parsed ``args``: every split in turn (or only plan them with ``--dry-run``).

    Everything that can fail before the first image is checked first, for every split: options,
    that the dataset's folders exist (nothing is created otherwise), the outputs, then each
    split's layout (val's classes against train's, empty folders).
    """
    validate_options(args.img_size, args.mode, args.quality, args.num_workers, args.limit)
    targets = outputs(args)
    for split in {"train", *targets}:
        find_classes(Path(args.data_path) / split)  # cheap: a mistyped --data-path fails before any folder is made
    if args.dry_run:
        return dry_run(args, targets)
    check_outputs(targets, args.force)
    scans = scan_splits(args.data_path, list(targets))
    for split, out in targets.items():
        images = len(scans[split].samples[:args.limit] if args.limit is not None else scans[split].samples)
        num_workers, note = capped_workers(args.num_workers, images)
        if note:
            log.info("%s", note)
        meta = write_split(args.data_path, split, out, scan=scans[split], img_size=args.img_size, mode=args.mode,
                           quality=args.quality, num_workers=num_workers, strict=args.strict, limit=args.limit,
                           shuffle_seed=None if args.no_shuffle else args.shuffle_seed, force=args.force)
        print(summary(meta, out), flush=True)
    return 0


def dry_run(args: argparse.Namespace, targets: dict[str, Path]) -> int:
    """Print what writing ``targets`` would do; create, write or delete nothing."""
    sample = integer_option("sample", args.sample, 1, hint=" (files cropped per split for --dry-run's estimates)")
    scans = scan_splits(args.data_path, list(targets))
    for split, out in targets.items():
        scan = scans[split]
        images = len(scan.samples[:args.limit] if args.limit is not None else scan.samples)
        num_workers, note = capped_workers(args.num_workers, images)
        if note:
            log.info("%s", note)
        plan = plan_split(scan, split, out, img_size=args.img_size, mode=args.mode, quality=args.quality,
                          num_workers=num_workers, limit=args.limit, sample=sample)
        print(report(plan, num_workers), flush=True)
    print("dry run: nothing was written")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
