"""The ``jit-ffcv`` command line: ``write``, ``info``, ``show``, ``trace``, ``demo`` and ``bench``.

A user's mistake (missing folder, bad option, existing output, unreadable image with
``--strict``, ...) is one line on stderr, ``jit-ffcv: error: ...``, and a non-zero exit;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

PROG = "jit-ffcv"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``jit-ffcv: error: ... (see jit-ffcv write --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report a user's mistake or environment, not a bug in jit-ffcv."""
    from writers.beton import BadImageError
    from writers.lock import LockError
    from writers.pool import WorkerLostError

    return (ValueError, OSError, BadImageError, LockError, WorkerLostError)


def build_parser() -> argparse.ArgumentParser:
    """All sub-commands and their options."""
    import jit_ffcv
    from writers import cli as write_cli

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = _Parser(prog=PROG, description="FFCV data loading for JiT.")
    parser.add_argument("--version", action="version", version=f"{PROG} {jit_ffcv.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    write_help = "convert ImageFolder splits (train, val) to .betons (--dry-run: plan only)"
    write_cli.add_arguments(sub.add_parser("write", parents=[common], help=write_help))
    from jit_ffcv import bench, demo, inspect_beton, trace

    inspect_beton.add_info_arguments(sub.add_parser(
        "info", parents=[common], help="a beton's metadata, per-class counts and bytes per image"))
    inspect_beton.add_show_arguments(sub.add_parser(
        "show", parents=[common], help="save a PNG grid of decoded samples with their class names"))
    trace.add_arguments(sub.add_parser(
        "trace", parents=[common], help="which files, labels and flips were in step S of epoch E on rank R"))

    demo.add_arguments(sub.add_parser("demo", parents=[common], help="write a beton, train a tiny JiT, compare img/s"))
    bench.add_arguments(sub.add_parser("bench", parents=[common], help="throughput: reference vs FFCV vs jit-ffcv"))
    return parser


def _run(args: argparse.Namespace) -> int:
    """Dispatch to the sub-command."""
    if args.command == "write":
        from writers import cli as write_cli

        return write_cli.main(args)
    if args.command in ("info", "show"):
        from jit_ffcv import inspect_beton

        return inspect_beton.info_main(args) if args.command == "info" else inspect_beton.show_main(args)
    if args.command == "trace":
        from jit_ffcv import trace

        return trace.main(args)
    if args.command == "demo":
        from jit_ffcv import demo

        return demo.main(args)
    if args.command == "bench":
        from jit_ffcv import bench

        return bench.main(args)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jit-ffcv`` console script."""
    args = None
    try:  # a Ctrl-C while the sub-commands are imported is one line too
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
        logging.getLogger("jit_ffcv").setLevel(logging.INFO)  # our notes; other libraries' INFO (torch's at exit) not
        return _run(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
