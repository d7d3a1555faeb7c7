"""A multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from optbench.schema import Fraction, PositiveInt


class MLP(nn.Sequential):
    """Linear-ReLU blocks (with optional batch norm and dropout) and a linear classifier head named `head`."""

    inputs = ("images", "vectors")  # what `build_model` lets it read

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: PositiveInt,
        hidden: Sequence[PositiveInt] = (256, 256),
        dropout: Fraction = 0.0,
        batch_norm: bool = False,
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            # Batch norm subtracts each unit's mean, so a bias before it would only be undone.
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        super().__init__(*layers)
        self.head = nn.Linear(width, num_classes)
