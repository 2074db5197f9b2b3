"""``JiTDataModule``: the Lightning face of jit-ffcv.

``prepare_data`` writes missing betons (once, on rank 0), ``setup`` opens their
metadata and refuses ones that do not match, the ``*_dataloader`` hooks build
FFCV loaders with a distributed-aware order and seeded, numba-compiled flips.
Batches are ``(images, labels)``: contiguous uint8 ``(B, 3, H, W)`` in [0, 255] and
int64 ``(B,)`` (a drop-in for ``PILToTensor`` + ``default_collate``) or, with
``output="float"``, float32 ``x / 255 * 2 - 1`` on the target device (what JiT
feeds its model).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numba
import torch

from jit_ffcv.assembly import World, dataset_info, order_for, tensor_ops, world_of
from jit_ffcv.betons import Betons
from jit_ffcv.checksum import bind_checksums
from jit_ffcv.dm_options import checked_options
from jit_ffcv.gpu_decode import BatchDecoder, GpuDecodeLoader, NvImageCodecDecoder
from jit_ffcv.gpu_gather import GatherJpegBytes, max_payload_bytes
from jit_ffcv.loader import JiTLoader
from jit_ffcv.mixing import warn_if_folder_order
from jit_ffcv.ops import EpochCell, FlipDecoder, nchw_ops
from writers.beton import DEFAULT_QUALITY
from writers.crop import center_crop_arr
from writers.ffcv_api import Operation
from writers.metadata import BetonMetadata
from writers.output import beton_name, default_beton_dir

__all__ = ["JiTDataModule", "create_jit_datamodule", "center_crop_arr", "beton_name"]

Order = Literal["quasi_random", "random", "sequential"]


class JiTDataModule(pl.LightningDataModule):
    """FFCV data for JiT on ImageNet-style folders (see the README for every option).

    Args:
        data_path: dataset root with ``train/<class>/<img>`` and optionally ``val/``.
        img_size: crop size (the ADM crop is applied once, when the beton is written).
        batch_size: per-device batch size.
        num_workers: decoding threads per process (FFCV uses threads, not processes), each decoding whole
            batches; capped at numba's thread limit (the number of cores). ``0`` (how JiT users debug a
            ``DataLoader``) runs one decoding thread: same batches, one core.
        pin_memory: pin the batch buffers (page-locked, for fast non-blocking copies to CUDA); only
            possible when CUDA is present. ``False`` keeps them pageable.
        num_replicas, rank: sharding; by default from ``torch.distributed``, else the Trainer.
        beton_dir: where betons live (default ``data_path/ffcv``; set it for read-only datasets). A split's
            beton is ``beton_name(...)`` there or, if that file does not exist, the one beton of the folder
            whose sidecar matches split, size, mode, quality and source folder (any file name).
        train_beton, val_beton: explicit beton paths (override ``beton_dir``). ``train_beton`` alone means
            no validation: no val beton is looked for, demanded or written; pass ``val_beton`` too to validate.
        mode, quality: how missing betons are written (``jpg`` with JPEG ``quality``, or ``raw``).
        order: ``quasi_random`` (page-local, default), ``random`` or ``sequential``.
        os_cache: let the OS page cache hold the beton (True) or FFCV's bounded process cache.
        seed: seed of the order and of the flips (both are functions of seed, epoch, index); 0 <= seed < 2**63.
        drop_last: drop the last partial batch of each epoch (JiT's ``DataLoader(drop_last=True)``).
        sampler_drop_last: DistributedSampler's ``drop_last``: N//W samples per rank instead of padding.
        batches_ahead: batches prepared in advance (at least ``num_workers``: one per thread). The loader
            keeps ``max(batches_ahead, num_workers) + 3`` batch buffers.
        flip_prob: probability of a horizontal flip (train only).
        output: ``uint8`` NCHW in [0, 255] or ``float`` (x/255*2-1) on ``device``.
        channels_last: images in channels-last memory (NHWC, what FFCV gives for free) instead of
            contiguous NCHW (``PILToTensor``'s layout, the default); the shape is (B, 3, H, W) either way.
        device: target device of the batches; default: the Trainer's, else CUDA if present, else CPU.
        write_workers: processes ``prepare_data`` writes missing betons with (default: the CPUs this process may use).
        buffer_pages: pages in the quasi-random rolling buffer (default 2 * batch_size, as FFCV).
        jpeg_decode: ``accurate`` (libjpeg-turbo's exact IDCT: Pillow's pixels) or ``fast`` (opt-in, biased; README).
        decode_device: ``cpu`` (default) or ``cuda``: decode the stored JPEGs on the GPU with nvImageCodec
            (``pip install "jit-ffcv[gpu]"``; jpg betons; same order, flips and labels as the CPU path).
        gpu_backend: with ``decode_device="cuda"``: ``auto`` (the JPEG engines, CUDA decoder as fallback),
            ``hardware`` or ``cuda``.
        verify_checksums: check each sample's stored bytes against the checksum written with them, before
            decoding (a ``ChecksumError`` names sample and beton). Default: on, except for raw train betons,
            where hashing costs about half of the copy it guards (JPEG: under 1% of decode; docs/loading.md).

    """

    def __init__(
        self,
        data_path: str = "./data/imagenet",
        img_size: int = 256,
        batch_size: int = 128,
        num_workers: int = 12,
        pin_memory: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        *,
        beton_dir: str | None = None,
        train_beton: str | None = None,
        val_beton: str | None = None,
        mode: Literal["jpg", "raw"] = "jpg",
        quality: int = DEFAULT_QUALITY,
        order: Order = "quasi_random",
        os_cache: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        sampler_drop_last: bool = False,
        batches_ahead: int = 3,
        flip_prob: float = 0.5,
        output: Literal["uint8", "float"] = "uint8",
        device: str | None = None,
        write_workers: int | None = None,
        buffer_pages: int | None = None,
        channels_last: bool = False,
        jpeg_decode: Literal["accurate", "fast"] = "accurate",
        decode_device: Literal["cpu", "cuda"] = "cpu",
        gpu_backend: Literal["auto", "hardware", "cuda"] = "auto",
        verify_checksums: bool | None = None,
    ) -> None:
        super().__init__()
        options = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        self.save_hyperparameters(checked_options(options))  # every option is read from self.hparams, checked
        self._explicit = {"train": Path(train_beton) if train_beton else None,
                          "val": Path(val_beton) if val_beton else None}
        self._paths: dict[str, Path] = {}  # betons opened by setup()
        self._meta: dict[str, BetonMetadata] = {}
        self._epoch: int | None = None
        self._train_loader: JiTLoader | GpuDecodeLoader | None = None

    def __getattr__(self, name: str) -> Any:
        """Options read as attributes (``dm.batch_size``): the values in ``self.hparams``, one copy."""
        hparams = self.__dict__.get("_hparams")
        if hparams is not None and name in hparams:
            return hparams[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def data_path(self) -> Path:
        """The dataset root (``train/<class>/<img>``, optionally ``val/``)."""
        return Path(self.hparams.data_path)

    @property
    def beton_dir(self) -> Path:
        """Where betons live: ``beton_dir`` if given, else ``data_path/ffcv``."""
        return Path(self.hparams.beton_dir) if self.hparams.beton_dir else default_beton_dir(self.data_path)

    # ------------------------------------------------------------------ betons
    @property
    def betons(self) -> Betons:
        """The betons this DataModule reads (which file each split uses, writing and checking them)."""
        hp = self.hparams
        return Betons(self.data_path, self.beton_dir, hp.img_size, hp.mode, hp.quality, self._explicit)

    def beton_path(self, split: str) -> Path:
        """Path of the beton used for ``split`` (``train`` or ``val``): explicit, default name, or found."""
        return self.betons.locate(split)[0]

    def _splits(self) -> list[str]:
        return self.betons.splits()

    # ------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Write the betons that do not exist yet (Lightning runs this once, on rank 0)."""
        self.betons.write_missing(self.hparams.write_workers)

    def setup(self, stage: str | None = None) -> None:
        """Read and check the betons' metadata; refuse betons written with other settings."""
        betons = self.betons
        for split in betons.splits():
            train_classes = self._meta["train"].classes if split == "val" else None
            path, meta = betons.open(split, train_classes)
            if split == "train" and split not in self._meta:  # once per DataModule
                warn_if_folder_order(meta, path)
            self._meta[split] = meta
            self._paths[split] = path

    # ------------------------------------------------------------------ world
    def _world(self) -> World:
        """Explicit arguments win, else torch.distributed, else the attached Trainer, else 1 process."""
        return world_of(self.hparams, self.trainer)

    def _target_device(self) -> torch.device | None:
        """Device the batches end on; ``None`` keeps uint8 batches on the CPU."""
        if self.hparams.device is not None:
            return torch.device(self.hparams.device)
        if self.hparams.output == "uint8":
            return None
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    # ------------------------------------------------------------- pipelines
    def train_image_ops(self) -> list[Operation]:
        """Image ops of the train pipeline, decoder first: override and extend to add your own numba ops.

        They run on HWC uint8 numpy images; the DataModule appends the NCHW layout, the tensor conversion
        and the device transfer. Ops with an ``epoch_cell`` attribute get the loader's epoch (see ops.py).
        """
        return self._get_train_transforms()

    def val_image_ops(self) -> list[Operation]:
        """Image ops of the val pipeline: decode only (override like :meth:`train_image_ops`)."""
        return self._get_val_transforms()

    def _get_train_transforms(self, epoch_cell: EpochCell | None = None) -> list[Operation]:
        """The earlier name of :meth:`train_image_ops`, kept so subclasses that override it still work."""
        return [FlipDecoder(flip_prob=self.hparams.flip_prob, seed=self.hparams.seed,
                            jpeg_decode=self.hparams.jpeg_decode)]

    def _get_val_transforms(self, epoch_cell: EpochCell | None = None) -> list[Operation]:
        """The earlier name of :meth:`val_image_ops`."""
        return [FlipDecoder(flip_prob=0.0, jpeg_decode=self.hparams.jpeg_decode)]

    def _image_ops(self, split: str, train: bool) -> list[Operation]:
        """The split's image ops, laid out as asked: NCHW by default, or the gathered JPEG bytes of GPU decoding."""
        if self.hparams.decode_device == "cuda":
            flip_prob = self.hparams.flip_prob if train else 0.0
            return [GatherJpegBytes(max_payload_bytes(self._paths[split]), flip_prob=flip_prob, seed=self.hparams.seed)]
        ops = self.train_image_ops() if train else self.val_image_ops()
        return ops if self.hparams.channels_last else nchw_ops(ops)  # CHW by the decoder if alone, else ToCHW

    def _loader(self, split: str, train: bool) -> JiTLoader | GpuDecodeLoader:
        if split not in self._meta:
            self.setup("fit")
        order = order_for(self.hparams, self._world(), train)
        image_tail, label_ops = tensor_ops(self.hparams, self._target_device())
        loader = JiTLoader(
            str(self._paths[split]),
            batch_size=self.hparams.batch_size,
            num_workers=max(1, min(self.hparams.num_workers, numba.config.NUMBA_NUM_THREADS)),  # 0: one thread
            os_cache=self.hparams.os_cache,
            order=order,
            distributed=order.num_replicas > 1,
            seed=self.hparams.seed,
            pipelines={"image": self._image_ops(split, train) + image_tail, "label": label_ops,
                       "index": None, "checksum": None},  # not decoded (the image op checks the checksum)
            drop_last=self.hparams.drop_last if train else False,
            batches_ahead=self.hparams.batches_ahead,
            pin_memory=self.hparams.pin_memory,
        )
        bind_checksums(loader.pipeline_specs, loader.reader, self._verifies(split, train))  # checked before decoding
        if self.hparams.decode_device != "cuda":
            return loader
        size = self.hparams.img_size
        return GpuDecodeLoader(loader, self.gpu_decoder(), image_size=(size, size), output=self.hparams.output)

    def _verifies(self, split: str, train: bool) -> bool:
        """Whether the split's loader checks each payload: ``verify_checksums``, else all but raw train betons."""
        chosen = self.hparams.verify_checksums
        return chosen if chosen is not None else not (train and self._meta[split].mode == "raw")

    def gpu_decoder(self) -> BatchDecoder:
        """The batch decoder of ``decode_device="cuda"``: nvImageCodec on the target device."""
        return NvImageCodecDecoder(self._target_device() or "cuda", backend=self.hparams.gpu_backend)

    def train_dataloader(self) -> JiTLoader | GpuDecodeLoader:
        """Loader of the train split for this rank; ``loader.sampler`` shows its order."""
        loader = self._loader("train", train=True)
        if self._epoch is not None:
            loader.set_epoch(self._epoch)
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> JiTLoader | GpuDecodeLoader | list[Any]:
        """Loader of the val split (sequential, no flip, split across ranks), or ``[]`` without val."""
        if "val" not in self._splits():
            return []
        return self._loader("val", train=False)

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next on the train loader (Lightning does this by itself via ``loader.sampler``)."""
        self._epoch = int(epoch)
        if self._train_loader is not None:
            self._train_loader.set_epoch(epoch)

    # ------------------------------------------------------------------- info
    def get_dataset_info(self) -> dict[str, Any]:
        """Sizes and sharding of the data: num_samples, num_classes, class_names, per-rank counts."""
        if "train" not in self._meta:
            self.setup("fit")
        return dataset_info(self.hparams, self._world(), self._meta, self._paths)


def create_jit_datamodule(args: argparse.Namespace, **overrides: Any) -> JiTDataModule:
    """Build a :class:`JiTDataModule` from JiT's argparse namespace.

    Uses JiT's argument names (``data_path``, ``img_size``, ``batch_size``,
    ``num_workers``, ``pin_mem``) and, when present, ``seed``; ``overrides`` are
    passed straight to the constructor.
    """
    kwargs: dict[str, Any] = {
        "data_path": args.data_path,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "pin_memory": getattr(args, "pin_mem", True),
    }
    if getattr(args, "seed", None) is not None:
        kwargs["seed"] = args.seed
    kwargs.update(overrides)
    return JiTDataModule(**kwargs)
