"""Vision Transformer (Dosovitskiy et al. 2021, arXiv:2010.11929), sized for small images.

Patch embedding (a strided convolution), a class token and learned position embeddings,
pre-norm encoder blocks, a final LayerNorm and a linear `head` on the class token. The default
(4x4 patches, width 192, 6 blocks, 3 heads) suits 32x32 images; parameter names follow timm's
(`patch_embed`, `cls_token`, `pos_embed`, `blocks.N`, `norm`, `head`) so layer-wise rules carry over.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from optbench.errors import ConfigError
from optbench.schema import Fraction, PositiveInt


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    inputs = ("images",)  # what `build_model` lets it read

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        patch_size: PositiveInt = 4,
        dim: PositiveInt = 192,
        depth: PositiveInt = 6,
        heads: PositiveInt = 3,
        mlp_ratio: float = 4.0,
        dropout: Fraction = 0.0,
    ):
        super().__init__()
        channels, height, width = input_shape
        if height % patch_size or width % patch_size:
            raise ConfigError(
                f"model.patch_size={patch_size}: must divide the image size {height}x{width}."
            )
        if dim % heads:
            raise ConfigError(f"model.heads={heads}: must divide model.dim={dim}.")
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, patch_size)
        tokens = (height // patch_size) * (width // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def layers(self) -> list[list[str]]:
        """Embeddings, then each block, then the final norm with the head (BEiT/timm convention)."""
        return [["patch_embed", "cls_token", "pos_embed"], *[[f"blocks.{i}"] for i in range(len(self.blocks))],
                ["norm", "head"]]

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay besides biases and norms (timm's ViT names the same)."""
        return {"pos_embed", "cls_token"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
