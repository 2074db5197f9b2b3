"""A tiny JiT-shaped model and its loss, for the demo, the examples and their CI tests.

It is the smallest model that consumes batches the way JiT does (``x/255*2-1``, class labels,
patch tokens, x-prediction flow matching), so examples train real steps in seconds on a CPU.
It is not JiT: use the JiT repository's models for research.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyJiT(nn.Module):
    """Patchify, a few transformer blocks conditioned on time and class, unpatchify (predicts clean x)."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, num_classes: int = 1000, dim: int = 64,
                 depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.zeros(1, (img_size // patch_size) ** 2, dim))
        self.label = nn.Embedding(num_classes, dim)
        self.time = nn.Linear(1, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 3 * patch_size**2)

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict the clean image from the noisy ``z`` (B, 3, H, W) at times ``t`` (B,) for labels ``y`` (B,)."""
        b, _, h, w = z.shape
        p = self.patch_size
        tokens = self.embed(z).flatten(2).transpose(1, 2) + self.pos
        tokens = tokens + (self.label(y) + self.time(t[:, None].to(tokens.dtype)))[:, None, :]
        out = self.head(self.blocks(tokens))  # (B, h/p * w/p, 3 p p)
        out = out.view(b, h // p, w // p, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, 3, h, w)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """JiT's input scaling: uint8 [0, 255] to float [-1, 1]; float batches (``output="float"``) pass through."""
    return images.float() / 255 * 2 - 1 if images.dtype == torch.uint8 else images.float()


def flow_matching_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """JiT's objective in miniature: x-prediction, loss on the velocity, logit-normal times."""
    x = to_model_range(images)
    b = x.shape[0]
    t = torch.sigmoid(torch.randn(b, device=x.device, generator=generator) * 0.8 - 0.8)
    noise = torch.randn(x.shape, device=x.device, generator=generator)
    tb = t.view(b, 1, 1, 1)
    z = tb * x + (1 - tb) * noise
    x_pred = model(z, t, labels)
    scale = (1 - tb).clamp_min(0.05)
    return torch.mean(((x_pred - z) / scale - (x - z) / scale) ** 2)
