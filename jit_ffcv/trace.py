"""``jit-ffcv trace``: which images, with which flips, were in step S of epoch E on rank R of W.

A researcher who sees a loss spike names the batch; this prints each of its samples' stored id,
ImageFolder index, source file (the sidecar's source folder, scanned as ImageFolder would, without
torchvision), label, class name and flip, and can save the batch as a PNG grid, decoded and flipped
exactly as the training loader delivered it. The options can come from a loader ``state_dict``
(JSON) or a Lightning checkpoint (its loader state and the DataModule's hyperparameters).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from writers.folder import DatasetLayoutError, scan_split
from writers.metadata import BetonMetadata, read_metadata

__all__ = ["TraceOptions", "TracedSample", "add_arguments", "main", "options_from_file", "trace"]


@dataclass(frozen=True)
class TraceOptions:
    """What a batch depends on: its position and the training loader's options (JiTDataModule's defaults)."""

    epoch: int
    step: int
    rank: int = 0
    world_size: int = 1
    batch_size: int = 128
    seed: int = 0
    flip_prob: float = 0.5
    order: str = "quasi_random"
    buffer_pages: int | None = None
    sampler_drop_last: bool = False
    drop_last: bool = True
    jpeg_decode: str = "accurate"


@dataclass(frozen=True)
class TracedSample:
    """One sample of the traced batch; ``image`` (HxWx3 uint8, flipped as delivered) only if decoded."""

    sample_id: int  # position in the beton
    index: int | None  # ImageFolder index (None: beton without the index field)
    path: str  # its source file ("?" if the source folder cannot be scanned here)
    label: int
    class_name: str
    flip: bool
    image: np.ndarray | None = field(default=None, repr=False)


def _order(options: TraceOptions) -> Any:
    from jit_ffcv.traversal import ORDERS, make_order

    if options.order not in ORDERS:
        raise ValueError(f"--order must be one of {sorted(ORDERS)}, got {options.order!r}")
    return make_order(options.order, num_replicas=options.world_size, rank=options.rank,
                      drop_last=options.sampler_drop_last, buffer_pages=options.buffer_pages)


def _pipelines(beton: str | Path, **wanted: Any) -> dict[str, Any]:
    """A pipeline for every field of ``beton``: ``wanted``'s, None (not decoded) for the others."""
    from writers.ffcv_api import Reader

    return {name: wanted.get(name) for name in Reader(str(beton)).handlers}


def batch_ids(beton: str | Path, options: TraceOptions, state: dict[str, Any] | None = None) -> tuple[np.ndarray, Any]:
    """Stored ids of the batch, in delivery order, and the labels-only loader whose order gave them."""
    from jit_ffcv.loader import JiTLoader
    from jit_ffcv.loader_state import check_state
    from writers.ffcv_api import IntDecoder

    loader = JiTLoader(str(beton), batch_size=options.batch_size, num_workers=1, order=_order(options),
                       seed=options.seed, drop_last=options.drop_last, pin_memory=False,
                       pipelines=_pipelines(beton, label=[IntDecoder()]))
    if state is not None:
        epoch, segments = check_state(state, loader.resume_spec())  # also: saved on this beton
        if epoch == options.epoch and len(segments) > 1:
            raise ValueError(f"epoch {epoch} was resumed at another world size ({segments}): its batches are not "
                             f"the plain epoch's, which trace shows; trace another epoch")
    loader.set_epoch(options.epoch)
    steps = len(loader)
    if not 0 <= options.step < steps:
        raise ValueError(f"--step {options.step} is out of range: epoch {options.epoch} has {steps} steps on rank "
                         f"{options.rank} of {options.world_size} at batch size {options.batch_size}")
    order = np.fromiter(loader.sampler, dtype=np.int64)
    return order[options.step * options.batch_size:(options.step + 1) * options.batch_size], loader


def source_files(meta: BetonMetadata, data_path: str | Path | None = None) -> list[str] | None:
    """Every file of the beton's source split in ImageFolder order (None if it cannot be scanned here)."""
    split_dir = Path(data_path) / meta.split if data_path else Path(meta.source.split(" (")[0])
    try:
        return [path for path, _ in scan_split(split_dir, classes=meta.classes).samples]
    except (DatasetLayoutError, OSError):
        return None


def _stored_files(meta: BetonMetadata, files: list[str] | None) -> list[str] | None:
    """Files of the stored samples of a beton without the index field: ImageFolder order, less skipped ones."""
    if files is None:
        return None
    skipped = {s["path"] for s in meta.skipped}
    return [p for p in files[:meta.limit] if p not in skipped]


def decode_batch(beton: str | Path, ids: np.ndarray, options: TraceOptions) -> np.ndarray:
    """The batch's images (N,H,W,3 uint8) decoded and flipped as the training loader does at ``options.epoch``."""
    from jit_ffcv.loader import JiTLoader
    from jit_ffcv.ops import EpochCell, FlipDecoder
    from jit_ffcv.traversal import SequentialOrder

    cell = EpochCell()
    decoder = FlipDecoder(flip_prob=options.flip_prob, seed=options.seed, epoch_cell=cell,
                          jpeg_decode=options.jpeg_decode)
    loader = JiTLoader(str(beton), batch_size=len(ids), num_workers=1, order=SequentialOrder(), indices=ids,
                       drop_last=False, batches_ahead=1, pin_memory=False, epoch_cell=cell,
                       pipelines=_pipelines(beton, image=[decoder]))
    loader.set_epoch(options.epoch)
    (images,), = list(loader)
    return np.array(images)


def trace(beton: str | Path, options: TraceOptions, *, state: dict[str, Any] | None = None, decode: bool = False,
          data_path: str | Path | None = None) -> list[TracedSample]:
    """The samples of step ``options.step`` of epoch ``options.epoch`` on rank ``options.rank``, in batch order."""
    from jit_ffcv.ops import flip_mask
    from writers.ffcv_api import stored_field

    meta = read_metadata(beton)
    ids, loader = batch_ids(beton, options, state)
    labels = stored_field(loader.reader, "label").reshape(-1)[ids]
    index = stored_field(loader.reader, "index")
    folder = None if index is None else index.reshape(-1)[ids]
    files = source_files(meta, data_path)
    stored = files if index is not None else _stored_files(meta, files)
    keys = folder if folder is not None else ids
    flips = flip_mask(options.seed, options.epoch, ids, options.flip_prob)
    images = decode_batch(beton, ids, options) if decode else [None] * len(ids)
    return [TracedSample(int(i), None if folder is None else int(folder[k]),
                         "?" if stored is None else stored[int(keys[k])], int(labels[k]), meta.classes[int(labels[k])],
                         bool(flips[k]), images[k]) for k, i in enumerate(ids)]


def _find_state(node: Any) -> dict[str, Any] | None:
    """The first JiTLoader state inside a checkpoint (Lightning keeps it under its fit loop's loader states)."""
    from jit_ffcv.loader_state import FORMAT

    if isinstance(node, dict):
        if node.get("format") == FORMAT:
            return node
        children = node.values()
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return None
    for child in children:
        if (found := _find_state(child)) is not None:
            return found
    return None


def options_from_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(options, loader state) from a loader ``state_dict`` saved as JSON or a Lightning checkpoint (.ckpt)."""
    path = Path(path)
    if path.suffix == ".json":
        ckpt: Any = json.loads(path.read_text())
        hparams: dict[str, Any] = {}
    else:
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # a checkpoint of the user's own run
        hparams = dict(ckpt.get("datamodule_hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
    state = _find_state(ckpt)
    if state is None and not hparams:
        raise ValueError(f"{path} holds neither a JiTLoader state nor JiTDataModule hyperparameters")
    known = {f.name for f in fields(TraceOptions)}
    options = {k: v for k, v in hparams.items() if k in known - {"epoch", "step", "rank"} and v is not None}
    if hparams.get("num_replicas"):
        options["world_size"] = hparams["num_replicas"]
    if state is not None:
        options.update({k: state[k] for k in ("batch_size", "seed", "order", "buffer_pages", "sampler_drop_last",
                                              "drop_last") if k in state})
        options.update(epoch=state["epoch"], world_size=state["segments"][-1][0])
    return options, state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jit-ffcv trace`` (defaults: JiTDataModule's)."""
    default = TraceOptions(epoch=0, step=0)
    parser.add_argument("beton", type=Path, help="the train beton the run read")
    parser.add_argument("--epoch", type=int, help="epoch of the batch (default: the --state's)")
    parser.add_argument("--step", type=int, required=True, help="step (batch index) within the epoch, from 0")
    parser.add_argument("--rank", type=int, default=default.rank, help="the rank whose batch to trace")
    parser.add_argument("--world-size", type=int, help="ranks of the run (default: the --state's, else 1)")
    parser.add_argument("--batch-size", type=int, help=f"per-rank batch size (default: {default.batch_size})")
    parser.add_argument("--seed", type=int, help=f"seed of the order and flips (default: {default.seed})")
    parser.add_argument("--flip-prob", type=float, help=f"flip probability (default: {default.flip_prob})")
    parser.add_argument("--order", choices=("quasi_random", "random", "sequential"), help="default: quasi_random")
    parser.add_argument("--buffer-pages", type=int, help="QuasiRandomOrder's buffer (default: 2 x batch size)")
    parser.add_argument("--state", type=Path, help="read the options from a loader state_dict (.json) or a "
                                                   "Lightning checkpoint (.ckpt, trusted: it is unpickled)")
    parser.add_argument("--data-path", type=Path, help="the dataset root, if not where the beton was written from")
    parser.add_argument("--png", type=Path, help="also save the batch as a PNG grid, as the loader delivered it")


def main(args: argparse.Namespace) -> int:
    """Print the traced batch (and save its grid)."""
    options, state = options_from_file(args.state) if args.state else ({}, None)
    for name in ("epoch", "rank", "world_size", "batch_size", "seed", "flip_prob", "order", "buffer_pages"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if "epoch" not in options:
        raise ValueError("give --epoch (or a --state that holds one)")
    opts = replace(TraceOptions(epoch=0, step=args.step), **options)
    if args.png is not None and (args.png.suffix.lower() != ".png" or not args.png.parent.is_dir()):
        raise ValueError(f"--png must name a .png file in an existing folder, got {args.png}")
    samples = trace(args.beton, opts, state=state, decode=args.png is not None, data_path=args.data_path)
    print(f"epoch {opts.epoch}, step {opts.step}, rank {opts.rank} of {opts.world_size}: {len(samples)} samples "
          f"(batch size {opts.batch_size}, seed {opts.seed}, {opts.order}, flip_prob {opts.flip_prob})")
    print("pos\tsample\tfolder_idx\tlabel\tclass\tflip\tpath")
    for k, s in enumerate(samples):
        print(f"{k}\t{s.sample_id}\t{'-' if s.index is None else s.index}\t{s.label}\t{s.class_name}\t"
              f"{'yes' if s.flip else 'no'}\t{s.path}")
    if args.png is not None:
        from jit_ffcv.grid import Sample, render_grid

        grid, _ = render_grid([Sample(s.sample_id, s.index, s.label, s.class_name, s.image) for s in samples])
        grid.save(args.png, format="PNG")
        print(f"saved {args.png}")
    return 0
