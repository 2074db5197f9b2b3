"""The ``jit-ffcv`` command line: ``write``, ``info``, ``demo`` and ``bench``.

A user's mistake (missing folder, bad option, existing output, unreadable image with
``--strict``, ...) is one line on stderr, ``jit-ffcv: error: ...``, and a non-zero exit;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, NoReturn, Sequence

if TYPE_CHECKING:
    from writers.metadata import BetonMetadata

PROG = "jit-ffcv"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``jit-ffcv: error: ... (see jit-ffcv write --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report a user's mistake or environment, not a bug in jit-ffcv."""
    from writers.beton import BadImageError
    from writers.lock import LockError

    return (ValueError, OSError, BadImageError, LockError)


def _info(args: argparse.Namespace) -> int:
    """Print a beton's metadata and its sample count as FFCV reads it."""
    from jit_ffcv._ffcv import Reader
    from writers.metadata import read_metadata, verify_file

    meta = read_metadata(args.beton)  # a missing beton or a broken sidecar is an error naming the file
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
        print(f"{PROG}: error: {args.beton} holds {reader_samples} samples but its metadata says {meta.num_samples}; "
              f"rewrite it", file=sys.stderr)
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
    import jit_ffcv
    from writers import beton

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = _Parser(prog=PROG, description="FFCV data loading for JiT.")
    parser.add_argument("--version", action="version", version=f"{PROG} {jit_ffcv.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    write_help = "convert ImageFolder splits (train, val) to .betons (--dry-run: plan only)"
    beton.add_arguments(sub.add_parser("write", parents=[common], help=write_help))
    info = sub.add_parser("info", parents=[common], help="show a beton's metadata")
    info.add_argument("beton")
    info.add_argument("--verify", action="store_true", help="also check the file's SHA-256")
    from jit_ffcv import bench, demo

    demo.add_arguments(sub.add_parser("demo", parents=[common], help="write a small beton, load it, show a batch"))
    bench.add_arguments(sub.add_parser("bench", parents=[common], help="throughput: reference vs FFCV vs jit-ffcv"))
    return parser


def _run(args: argparse.Namespace) -> int:
    """Dispatch to the sub-command."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jit-ffcv`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
