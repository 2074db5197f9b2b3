"""The DataModule's options, checked once at construction: a wrong value is one line naming the option.

Checked before anything is opened or written, so a typo never costs a beton write or a compile.
"""

from __future__ import annotations

from typing import Any

import torch

from jit_ffcv.gpu_decode import check_cuda, load_nvimgcodec
from jit_ffcv.jpeg import decode_flags
from jit_ffcv.ops import SEED_LIMIT
from jit_ffcv.order import KINDS
from writers.checks import flag, int_at_least, int_in_range, one_of, probability
from writers.encode import MODES

__all__ = ["DECODE_DEVICES", "GPU_BACKENDS", "OUTPUTS", "check_device", "check_gpu_decode", "checked_options"]

OUTPUTS = ("uint8", "float")
DECODE_DEVICES = ("cpu", "cuda")
GPU_BACKENDS = ("auto", "hardware", "cuda")
_OPTIONAL_COUNTS = {"write_workers": 0, "buffer_pages": 1}  # None: chosen later; else at least this
_FLAGS = ("pin_memory", "os_cache", "drop_last", "sampler_drop_last", "channels_last")


def check_gpu_decode(mode: str, device: str | None) -> None:
    """GPU decoding needs jpg betons, nvImageCodec and CUDA: one line saying which is missing."""
    if mode != "jpg":
        raise ValueError(f"decode_device='cuda' decodes stored JPEGs: it needs mode='jpg', got mode={mode!r}")
    load_nvimgcodec()
    check_cuda(torch.device(device or "cuda"))


def check_device(device: Any) -> None:
    """A device torch understands, and CUDA only where CUDA is present (else one line saying what to pass)."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r} ({error})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available in this process; pass device='cpu' or None")


def checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """``JiTDataModule``'s constructor arguments, every value checked and normalised (plain ints and bools)."""
    o = dict(options)
    o["img_size"] = int_at_least("img_size", o["img_size"], 32)
    o["batch_size"] = int_at_least("batch_size", o["batch_size"], 1)
    o["num_workers"] = int_at_least("num_workers", o["num_workers"], 0)
    o["batches_ahead"] = int_at_least("batches_ahead", o["batches_ahead"], 1)
    o["seed"] = int_in_range("seed", o["seed"], 0, SEED_LIMIT)
    one_of("mode", o["mode"], MODES)
    one_of("order", o["order"], KINDS)
    one_of("output", o["output"], OUTPUTS)
    if o["mode"] == "jpg":
        o["quality"] = int_in_range("quality", o["quality"], 1, 101)
    o["flip_prob"] = probability("flip_prob", o["flip_prob"])
    decode_flags(o["jpeg_decode"])
    if o["num_replicas"] is not None:
        o["num_replicas"] = int_at_least("num_replicas", o["num_replicas"], 1)
    if o["rank"] is not None:
        o["rank"] = (int_at_least("rank", o["rank"], 0) if o["num_replicas"] is None
                     else int_in_range("rank", o["rank"], 0, o["num_replicas"], high_name="num_replicas"))
    for name, low in _OPTIONAL_COUNTS.items():
        if o[name] is not None:
            o[name] = int_at_least(name, o[name], low)
    for name in _FLAGS:
        o[name] = flag(name, o[name])
    check_device(o["device"])
    one_of("decode_device", o["decode_device"], DECODE_DEVICES)
    one_of("gpu_backend", o["gpu_backend"], GPU_BACKENDS)
    if o["decode_device"] == "cuda":
        check_gpu_decode(o["mode"], o["device"])
    if o["verify_checksums"] is not None:
        o["verify_checksums"] = flag("verify_checksums", o["verify_checksums"])
    return o
