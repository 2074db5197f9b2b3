"""LightningCLI entry for the shipped configs: ``TinyJiTModule`` trained on ``JiTDataModule`` batches.

Run from the repository root, e.g.::

    .venv/bin/python examples/lightning/train.py fit --config configs/imagenet_256.yaml \
        --data.data_path /data/imagenet

``TinyJiTModule`` stands in for a JiT model (same input range, labels and loss; about 0.25M
parameters at 256 px); replace it with your own LightningModule to train JiT itself. One seed rules the
run: ``seed_everything`` (0 by default) seeds torch/numpy/random and is also the DataModule's
``seed`` (sample order and flips) unless ``data.seed`` is set.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from jit_ffcv import JiTDataModule
from jit_ffcv.toy import TinyJiT, flow_matching_loss


class TinyJiTModule(LightningModule):
    """TinyJiT with JiT's flow-matching loss: logs ``train_loss`` every step and ``val_loss`` per validation."""

    def __init__(self, img_size: int = 256, patch_size: int = 16, num_classes: int = 1000, dim: int = 64,
                 depth: int = 2, heads: int = 4, lr: float = 2e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95)) -> None:
        """``img_size`` comes from ``data.img_size`` under the CLI; the rest sizes the model and AdamW."""
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyJiT(img_size=img_size, patch_size=patch_size, num_classes=num_classes, dim=dim,
                           depth=depth, heads=heads)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One flow-matching step on a batch of uint8 or float (x/255*2-1) images and int64 labels."""
        images, labels = batch
        loss = flow_matching_loss(self.net, images, labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Validation loss with noise and times seeded by the batch index, so it is comparable across epochs."""
        images, labels = batch
        generator = torch.Generator(device=images.device).manual_seed(batch_idx)
        loss = flow_matching_loss(self.net, images, labels, generator=generator)
        self.log("val_loss", loss, batch_size=len(labels), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW with the configured learning rate, betas and weight decay."""
        hp = self.hparams
        return torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)


class JiTCLI(LightningCLI):
    """LightningCLI where ``data.seed`` defaults to ``seed_everything`` and ``model.img_size`` is ``data.img_size``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """``data.seed`` defaults to null (follow ``seed_everything``); ``model.img_size`` is ``data.img_size``."""
        parser.set_defaults({"data.seed": None})
        parser.link_arguments("data.img_size", "model.img_size")

    def before_instantiate_classes(self) -> None:
        """Give an unset ``data.seed`` the seed Lightning has just set (``seed_everything: false``: 0, the default).

        Lightning resolves ``seed_everything: true`` to ``$PL_GLOBAL_SEED``, else 0, the same on every rank.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.data.seed is None:
            config.data.seed = 0 if config.seed_everything is False else int(config.seed_everything)


def main(args: list[str] | None = None) -> JiTCLI:
    """Run the CLI on ``args`` (default: ``sys.argv``); ``seed_everything`` defaults to 0."""
    return JiTCLI(TinyJiTModule, JiTDataModule, seed_everything_default=0, args=args)


if __name__ == "__main__":
    main()
