"""What a split's loader is made of, from the DataModule's options: the world, the order, the tensor ops, the info.

Pure functions of the options (``hparams``) and the process's world, so the Lightning face
(:mod:`jit_ffcv.datamodule`) keeps only the hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jit_ffcv.ops import ToUnitRange
from jit_ffcv.order import samples_per_rank
from jit_ffcv.traversal import SequentialOrder, ShardedOrder, make_order
from writers.ffcv_api import IntDecoder, Operation, Squeeze, ToDevice, ToTensor, ToTorchImage
from writers.metadata import BetonMetadata

__all__ = ["World", "dataset_info", "order_for", "tensor_ops", "world_of"]

@dataclass(frozen=True)
class World:
    """This process's place in the data-parallel world."""

    num_replicas: int
    rank: int


def world_of(hparams: Mapping[str, Any], trainer: Any) -> World:
    """Explicit options win, else torch.distributed, else the attached Trainer, else 1 process."""
    world, rank = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    elif trainer is not None:
        world, rank = trainer.world_size, trainer.global_rank
    world = hparams["num_replicas"] if hparams["num_replicas"] is not None else world
    rank = hparams["rank"] if hparams["rank"] is not None else rank
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, num_replicas={world})")
    return World(world, rank)


def order_for(hparams: Mapping[str, Any], world: World, train: bool) -> ShardedOrder:
    """This rank's order: the configured one for train, sequential for val; sharded over the world."""
    if not train:
        return SequentialOrder(num_replicas=world.num_replicas, rank=world.rank)
    return make_order(hparams["order"], num_replicas=world.num_replicas, rank=world.rank,
                      drop_last=hparams["sampler_drop_last"], buffer_pages=hparams["buffer_pages"])


def tensor_ops(hparams: Mapping[str, Any], device: torch.device | None) -> tuple[list[Operation], list[Operation]]:
    """Ops appended to the image and label pipelines: NCHW, to tensor, device, range; labels (B,)."""
    image: list[Operation] = (
        [ToTensor(), ToTorchImage(channels_last=True)] if hparams["channels_last"] else [ToTensor()]
    )
    label: list[Operation] = [IntDecoder(), ToTensor(), Squeeze(1)]  # (B, 1) -> (B,), also for B = 1
    if hparams["decode_device"] == "cuda":
        return [], label  # the gathered bytes stay on the CPU; GpuDecodeLoader decodes them on the GPU
    if device is not None and device.type != "cpu":
        image.append(ToDevice(device, non_blocking=True))
        label.append(ToDevice(device, non_blocking=True))
    if hparams["output"] == "float":
        image.append(ToUnitRange())
    return image, label


def dataset_info(hparams: Mapping[str, Any], world: World, meta: Mapping[str, BetonMetadata],
                 paths: Mapping[str, Path]) -> dict[str, Any]:
    """Sizes and sharding of the data: num_samples, num_classes, class_names, per-rank counts, the betons."""
    train = meta["train"]
    n = train.num_samples
    per_rank = samples_per_rank(n, world.num_replicas, hparams["sampler_drop_last"])
    batch = hparams["batch_size"]
    info: dict[str, Any] = {
        "num_samples": n,
        "num_classes": train.num_classes,
        "class_names": list(train.classes),
        "img_size": hparams["img_size"],
        "mode": hparams["mode"],
        "num_replicas": world.num_replicas,
        "rank": world.rank,
        "samples_per_rank": per_rank,
        "batches_per_rank": per_rank // batch if hparams["drop_last"] else -(-per_rank // batch),
        "train_beton": str(paths["train"]),
    }
    if "val" in meta:
        info["val_num_samples"] = meta["val"].num_samples
        info["val_beton"] = str(paths["val"])
    return info
