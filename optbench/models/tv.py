"""torchvision's ImageNet ResNets and Vision Transformer, with the parameter names optbench's rules use.

The torchvision network is kept whole as `body` (its own parameter names below that, so its
checkpoints load with a prefix) and its classifier becomes `head`, which the `backbone_head` and
`layer_decay` presets expect. Parameter counts are torchvision's: ResNet-50 25,557,032 and ViT-B/16
86,567,656 with 1,000 classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torchvision
from torch import nn

from optbench.errors import ConfigError
from optbench.schema import Fraction, PositiveInt


class TorchvisionResNet(nn.Module):
    """`torchvision.models.resnet18/34/50/101/152` (7x7 stem and max-pool), untrained."""

    inputs = ("images",)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        arch: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet50",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if input_shape[0] != 3:
            raise ConfigError(f"model.arch={arch}: torchvision's ResNets read 3-channel images, the data have "
                              f"{input_shape[0]} (shape {tuple(input_shape)}).")
        self.body = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes,
                                                      zero_init_residual=zero_init_residual)
        self.head = self.body.fc
        self.body.fc = nn.Identity()

    def layers(self) -> list[list[str]]:
        """Stem, then each residual block, then the head (the depth order of layer-wise LR decay)."""
        blocks = [[f"body.layer{i}.{j}"] for i in range(1, 5) for j in range(len(getattr(self.body, f"layer{i}")))]
        return [["body.conv1", "body.bn1"], *blocks, ["head"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class TorchvisionViT(nn.Module):
    """`torchvision.models.VisionTransformer`; the defaults are ViT-B/16 (`vit_b_16`).

    The image size comes from the data, so the same model runs on 224x224 ImageNet and, smaller,
    on 32x32 images for a smoke test.
    """

    inputs = ("images",)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        patch_size: PositiveInt = 16,
        num_layers: PositiveInt = 12,
        num_heads: PositiveInt = 12,
        hidden_dim: PositiveInt = 768,
        mlp_dim: PositiveInt = 3072,
        dropout: Fraction = 0.0,
    ):
        super().__init__()
        channels, height, width = input_shape
        if channels != 3 or height != width or height % patch_size:
            raise ConfigError(f"model.patch_size={patch_size}: torchvision's ViT reads square 3-channel images "
                              f"whose side the patch size divides; the data have shape {tuple(input_shape)}.")
        if hidden_dim % num_heads:
            raise ConfigError(f"model.num_heads={num_heads}: must divide model.hidden_dim={hidden_dim}.")
        self.body = torchvision.models.VisionTransformer(
            image_size=height, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
            hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout, num_classes=num_classes,
        )
        self.head = self.body.heads.head
        self.body.heads = nn.Identity()

    def layers(self) -> list[list[str]]:
        """Embeddings, then each encoder block, then the final norm with the head (BEiT/timm order)."""
        blocks = [[f"body.encoder.layers.{name}"] for name, _ in self.body.encoder.layers.named_children()]
        return [["body.conv_proj", "body.class_token", "body.encoder.pos_embedding"], *blocks,
                ["body.encoder.ln", "head"]]

    def no_weight_decay(self) -> set[str]:
        """The position embedding and class token: no weight decay, as timm's ViT (`pos_embed`, `cls_token`)."""
        return {"body.encoder.pos_embedding", "body.class_token"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
