"""``jit-ffcv bench``'s options checked before anything is measured: one line naming the option and the fix."""

from __future__ import annotations

import argparse


def _at_least(args: argparse.Namespace, name: str, low: float, why: str = "") -> None:
    value = getattr(args, name.lstrip("-").replace("-", "_"))
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low:g}{why}, got {value!r}")


def check_device(device: str) -> None:
    """``--device``: a device torch knows (``cpu``, ``cuda``, ``cuda:1`` ...), and CUDA present when asked for."""
    if device == "cpu":
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device: give cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r} needs CUDA, which this machine's torch does not see "
                         f"(torch {torch.__version__}); use --device cpu or a CUDA build of torch") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: the bench delivers batches on cpu or cuda only")


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError (one line) for an option no measurement could run with, before any work."""
    _at_least(args, "--batch-size", 1)
    _at_least(args, "--workers", 1, " (decoding threads per process)")
    _at_least(args, "--epochs", 2, " (the first epoch is the warm-up, then at least one steady epoch)")
    _at_least(args, "--min-seconds", 0)
    _at_least(args, "--target-samples", 1)
    _at_least(args, "--repeat", 1)
    _at_least(args, "--procs", 1)
    for size in args.sizes:
        if size < 32:
            raise ValueError(f"--sizes must be >= 32 (the DataModule's smallest img_size), got {size}")
    check_device(args.device)
