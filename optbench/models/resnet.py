"""ResNets for small images with a 3x3 stem (He et al., 2016, arXiv:1512.03385).

Depth 6n+2 (20, 32, 44, 56, 110) is the paper's CIFAR family: three stages of n basic blocks,
16/32/64 channels times `width_multiplier`. Depth 18 or 34 is the ImageNet layout ([2,2,2,2] or
[3,4,6,3] blocks, 64 to 512 channels) with the 3x3 stem and no max-pool that CIFAR training uses.
Shortcuts that change shape are 1x1 convolutions with batch norm (the paper's option B).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from optbench.errors import ConfigError
from optbench.schema import PositiveInt


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def stage_layout(depth: int) -> tuple[list[int], list[int]]:
    """Blocks per stage and channels per stage for a depth."""
    if depth == 18:
        return [2, 2, 2, 2], [64, 128, 256, 512]
    if depth == 34:
        return [3, 4, 6, 3], [64, 128, 256, 512]
    if depth >= 8 and (depth - 2) % 6 == 0:
        n = (depth - 2) // 6
        return [n, n, n], [16, 32, 64]
    raise ConfigError(f"model.depth={depth}: must be 6n+2 (20, 32, 44, 56, 110), 18 or 34.")


class ResNet(nn.Module):
    """Stem, stages named `layer1`..`layerN` (for layer-wise LR rules), pooling, and `head`."""

    inputs = ("images",)  # what `build_model` lets it read

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        depth: Literal[20, 32, 44, 56, 110, 18, 34] = 20,
        width_multiplier: PositiveInt = 1,
    ):
        super().__init__()
        blocks, channels = stage_layout(depth)
        channels = [c * width_multiplier for c in channels]
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], channels[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        )
        in_channels = channels[0]
        for i, (count, out_channels) in enumerate(zip(blocks, channels)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(count):
                stage.append(BasicBlock(in_channels, out_channels, stride if j == 0 else 1))
                in_channels = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def layers(self) -> list[list[str]]:
        """Stem, then each residual block, then the head: the depth order of layer-wise LR decay."""
        blocks = [
            [f"layer{i}.{j}"] for i in range(1, self.num_stages + 1) for j in range(len(getattr(self, f"layer{i}")))
        ]
        return [["stem"], *blocks, ["head"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.head(torch.flatten(self.pool(x), 1))
