"""The ``jit-ffcv`` command line: ``write``, ``info``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from writers.metadata import BetonMetadata


def _info(args: argparse.Namespace) -> int:
    """Print a beton's metadata and its sample count as FFCV reads it."""
    from jit_ffcv._ffcv import Reader
    from writers.metadata import read_metadata, verify_file

    meta = read_metadata(args.beton)
    verify_file(args.beton, meta, checksum=args.verify)
    reader_samples = int(Reader(str(args.beton)).num_samples)
    print(f"beton:        {args.beton}")
    print(f"samples:      {reader_samples} (metadata: {meta.num_samples})")
    print(f"split:        {meta.split}   img_size: {meta.img_size}   mode: {meta.mode}   quality: {meta.quality}")
    print(f"classes:      {meta.num_classes} ({', '.join(meta.classes[:3])}{', ...' if meta.num_classes > 3 else ''})")
    print(f"size:         {meta.size_bytes / 2**20:.1f} MiB ({meta.size_bytes / max(meta.num_samples, 1) / 1024:.1f} KiB/image)")
    print(f"crop:         {meta.crop}   source: {meta.source}")
    print(f"written:      {meta.seconds:.1f} s, {meta.images_per_second:.0f} img/s, {meta.num_workers} workers, writer {meta.writer_version}")
    print(f"order:        {_layout(meta, 'index' in Reader(str(args.beton)).handlers)}")
    print(f"skipped:      {len(meta.skipped)}   ignored (non-image): {len(meta.ignored)}")
    for s in meta.skipped:
        print(f"  {s['path']}: {s['error']}")
    print(f"sha256:       {meta.sha256}{'  (verified)' if args.verify else ''}")
    if reader_samples != meta.num_samples:
        print("error: sample count differs from metadata", file=sys.stderr)
        return 1
    return 0


def _layout(meta: BetonMetadata, has_index: bool) -> str:
    """How stored samples relate to ImageFolder order, and how to trace one back to its file."""
    trace = "sample i is ImageFolder sample index[i] (field 'index')" if has_index else (
        "sample i is the i-th non-skipped file (no index field)")
    if meta.sample_order == "shuffled":
        return f"shuffled (seed {meta.shuffle_seed}); {trace}"
    return f"ImageFolder (class-sorted), mixes classes poorly with order='quasi_random'; {trace}"


def build_parser() -> argparse.ArgumentParser:
    """All sub-commands and their options."""
    from writers import beton

    parser = argparse.ArgumentParser(prog="jit-ffcv", description="FFCV data loading for JiT.")
    sub = parser.add_subparsers(dest="command", required=True)
    beton.add_arguments(sub.add_parser("write", help="convert an ImageFolder split to a .beton"))
    info = sub.add_parser("info", help="show a beton's metadata")
    info.add_argument("beton")
    info.add_argument("--verify", action="store_true", help="also check the file's SHA-256")
    from jit_ffcv import bench, demo

    demo.add_arguments(sub.add_parser("demo", help="write a small beton, load it, show a batch"))
    bench.add_arguments(sub.add_parser("bench", help="throughput: reference vs FFCV vs jit-ffcv"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jit-ffcv`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "write":
        from writers import beton

        return beton.main(args)
    if args.command == "info":
        return _info(args)
    if args.command == "demo":
        from jit_ffcv import demo

        return demo.main(args)
    if args.command == "bench":
        from jit_ffcv import bench

        return bench.main(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
