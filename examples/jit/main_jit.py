r"""JiT's ``main_jit.py`` in miniature, with jit-ffcv as its data loader.

The argument names, the ``torchrun`` launch, ``sampler.set_epoch(epoch)``, the ``x/255*2-1``
input in bf16 autocast and the epoch-granular ``--resume DIR`` (``DIR/checkpoint-last.pth``,
training continues at the saved epoch + 1) are JiT's; only the data lines differ (the README's
"Drop into JiT" shows them as a diff). The model is ``jit_ffcv.toy.TinyJiT``, so a few steps
run in seconds on a CPU::

    torchrun --standalone --nproc_per_node=2 examples/jit/main_jit.py --data_path DATA \\
        --img_size 32 --batch_size 4 --num_workers 1 --epochs 2 --output_dir out --resume out

Under ``torchrun`` it uses NCCL when the device is CUDA and gloo otherwise; run as a plain
``python`` script it trains in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from jit_ffcv import create_jit_datamodule
from jit_ffcv.loader import JiTLoader
from jit_ffcv.toy import TinyJiT, flow_matching_loss

log = logging.getLogger("main_jit")
CHECKPOINT = "checkpoint-last.pth"  # JiT's name for the checkpoint --resume reads


def get_args_parser() -> argparse.ArgumentParser:
    """JiT's argument names (a subset) plus ``--max_steps``, ``--patch_size`` and ``--log_samples``."""
    p = argparse.ArgumentParser("JiT example (jit-ffcv data)")
    p.add_argument("--data_path", default="./data/imagenet", type=str, help="dataset root with train/<class>/...")
    p.add_argument("--img_size", default=256, type=int, help="image size (the beton's crop size)")
    p.add_argument("--patch_size", default=16, type=int, help="TinyJiT patch size (JiT-B/16: 16)")
    p.add_argument("--class_num", default=1000, type=int, help="number of classes the model embeds")
    p.add_argument("--epochs", default=200, type=int)
    p.add_argument("--start_epoch", default=0, type=int, help="first epoch (a resumed checkpoint overrides it)")
    p.add_argument("--batch_size", default=128, type=int, help="batch size per GPU")
    p.add_argument("--lr", default=None, type=float, help="absolute learning rate (default: blr * total batch / 256)")
    p.add_argument("--blr", default=5e-5, type=float, help="base learning rate")
    p.add_argument("--seed", default=0, type=int,
                   help="model seed (+ rank, as JiT) and data seed (the same on all ranks)")
    p.add_argument("--num_workers", default=12, type=int, help="jit-ffcv decoding threads per process")
    p.add_argument("--pin_mem", action="store_true", help="pin the batch buffers (default)")
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    p.set_defaults(pin_mem=True)
    p.add_argument("--output_dir", default="./output_dir", help="where checkpoint-last.pth is written")
    p.add_argument("--resume", default="", help="folder holding checkpoint-last.pth to resume from (JiT's semantics)")
    p.add_argument("--save_last_freq", default=5, type=int,
                   help="save checkpoint-last.pth every N epochs and at the end")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max_steps", default=0, type=int,
                   help="at most this many steps per epoch (a smoke test on a full dataset); 0: whole epochs")
    p.add_argument("--log_samples", action="store_true",
                   help="write OUTPUT_DIR/samples_rank{R}.jsonl: per epoch, the labels and pixel sums trained on")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse values the run cannot use, naming the option and what is allowed."""
    for name, low in (("epochs", 1), ("batch_size", 1), ("num_workers", 1), ("save_last_freq", 1), ("class_num", 1),
                      ("start_epoch", 0), ("max_steps", 0)):
        if getattr(args, name) < low:
            raise SystemExit(f"main_jit.py: error: --{name} must be >= {low}, got {getattr(args, name)}")
    if args.img_size % args.patch_size:
        raise SystemExit(f"main_jit.py: error: --img_size {args.img_size} must be a multiple of "
                         f"--patch_size {args.patch_size}")


def init_distributed(device: torch.device) -> tuple[torch.device, int, int]:
    """Join the ``torchrun`` group when launched by it (NCCL on CUDA, gloo on CPU).

    Returns this process's device (``cuda:LOCAL_RANK`` on CUDA), its rank and the world size.
    """
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    if "RANK" not in os.environ:
        return device, 0, 1
    # a first run writes the beton on rank 0 while the others wait at a barrier: allow it time
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return device, dist.get_rank(), dist.get_world_size()


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` under ``torchrun``, the bare model in a single process."""
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def build_train_loader(args: argparse.Namespace, rank: int) -> JiTLoader:
    """The lines that replace JiT's ImageFolder + DistributedSampler + DataLoader."""
    dm = create_jit_datamodule(args)  # data_path, img_size, batch_size, num_workers, pin_mem, seed
    if rank == 0:
        dm.prepare_data()  # writes data_path/ffcv/*.beton if missing (better: `jit-ffcv write` beforehand)
    if dist.is_initialized():
        dist.barrier()
    dm.setup("fit")
    return dm.train_dataloader()  # rank and world size come from torch.distributed


def load_checkpoint(args: argparse.Namespace, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """JiT's ``--resume``: load ``RESUME/checkpoint-last.pth`` if it exists and continue at its epoch + 1."""
    path = Path(args.resume) / CHECKPOINT if args.resume else None
    if path is None or not path.exists():
        log.info("training from scratch%s", f" ({path} does not exist)" if path else "")
        return
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    args.start_epoch = int(checkpoint["epoch"]) + 1
    log.info("resumed %s: epoch %d done, continuing at epoch %d", path, checkpoint["epoch"], args.start_epoch)


def save_checkpoint(args: argparse.Namespace, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int) -> None:
    """Write ``OUTPUT_DIR/checkpoint-last.pth`` atomically (a killed save never leaves a torn checkpoint)."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CHECKPOINT}.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, tmp)
    os.replace(tmp, out / CHECKPOINT)


def train_one_epoch(model: torch.nn.Module, loader: JiTLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of JiT's loop: ``x/255*2-1`` (inside ``flow_matching_loss``), bf16 autocast, AdamW step."""
    model.train(True)
    record: dict[str, Any] = {"steps": 0, "labels": [], "pixel_sums": []}
    for step, (x, labels) in enumerate(loader):
        if args.max_steps and step >= args.max_steps:
            break
        if args.log_samples:  # a flip does not change a sample's pixel sum: the test recognises samples by it
            record["labels"] += labels.tolist()
            record["pixel_sums"] += x.reshape(len(x), -1).sum(1, dtype=torch.int64).tolist()
        x, labels = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = flow_matching_loss(model, x, labels)
        record["loss"] = loss.item()
        if not math.isfinite(record["loss"]):
            raise SystemExit(f"loss is {record['loss']} at epoch step {step}, stopping training")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record["steps"] = step + 1
    return record


def append_record(args: argparse.Namespace, record: dict[str, Any], rank: int) -> None:
    """``--log_samples``: append one epoch's record to ``OUTPUT_DIR/samples_rank{rank}.jsonl``."""
    path = Path(args.output_dir) / f"samples_rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def main(args: argparse.Namespace) -> None:
    """Set up the group, data, model and optimizer, resume, then train ``start_epoch .. epochs - 1``."""
    check_args(args)
    device, rank, world = init_distributed(torch.device(args.device))
    torch.manual_seed(args.seed + rank)  # JiT's model seeding; the data order uses args.seed on every rank
    loader = build_train_loader(args, rank)
    model = TinyJiT(img_size=args.img_size, patch_size=args.patch_size, num_classes=args.class_num).to(device)
    lr = args.lr if args.lr is not None else args.blr * args.batch_size * world / 256
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    load_checkpoint(args, model, optimizer)
    ddp = wrap_ddp(model, device)
    for epoch in range(args.start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)  # always (JiT guards it with `if args.distributed`: see the README)
        order, batches = (list(loader.sampler), len(loader)) if args.log_samples else ([], 0)
        record = train_one_epoch(ddp, loader, optimizer, device, args)
        log.info("epoch %d: %d steps, loss %.4f", epoch, record["steps"], record.get("loss", float("nan")))
        if args.log_samples:
            append_record(args, {"epoch": epoch, "rank": rank, "world_size": world, "len_loader": batches,
                                 "order": order, **record}, rank)
        if rank == 0 and args.output_dir and (epoch % args.save_last_freq == 0 or epoch + 1 == args.epochs):
            save_checkpoint(args, model, optimizer, epoch)
    if dist.is_initialized():
        dist.barrier()  # rank 0's last checkpoint is complete before any rank reports success
        dist.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(message)s")
    main(get_args_parser().parse_args())
