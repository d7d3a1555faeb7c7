"""Samples for GANs that need no download: a ring of Gaussians, and the bundled digits as images.

The labels are placeholders (a GAN trains on the samples alone); the task measures the generated
samples against the known modes (`optbench.sample_quality.SampleQuality`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from optbench.data import InMemoryData, bundled_digits, split
from optbench.sample_quality import NearestNeighbourCoverage, RingCoverage
from optbench.schema import PositiveFloat, PositiveInt, UnitInterval
from optbench.tasks import declares_task


@declares_task(RingCoverage)
def ring(batch_size: PositiveInt = 256, modes: PositiveInt = 8, radius: PositiveFloat = 2.0,
         std: PositiveFloat = 0.05, train_size: PositiveInt = 65536, seed: int = 0,
         target: Optional[str] = "modes >= 7") -> InMemoryData:
    """A mixture of `modes` Gaussians (standard deviation `std`) evenly spaced on a circle of `radius`
    (Metz et al. 2017 use radius 2 and std 0.02; 0.05 here, at which a plain GAN covers the ring in
    about a CPU-minute)."""
    angles = torch.arange(modes) * 2 * math.pi / modes
    centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    generator = torch.Generator().manual_seed(seed)
    which = torch.randint(0, modes, (train_size,), generator=generator)
    x = centers[which] + std * torch.randn(train_size, 2, generator=generator)
    y = torch.zeros(train_size, dtype=torch.long)
    return InMemoryData(x, y, x[:batch_size], y[:batch_size], 1, batch_size,
                        task=RingCoverage(centers, std, target))


@declares_task(NearestNeighbourCoverage)
def digit_images(batch_size: PositiveInt = 64, size: PositiveInt = 32, val_fraction: UnitInterval = 0.2,
                 split_seed: int = 0, target: Optional[str] = "modes >= 10") -> InMemoryData:
    """The bundled 8x8 digits upsampled to `size`x`size` in [-1, 1] (a DCGAN's tanh range)."""
    x, y = bundled_digits()
    x = x / 16.0  # pixel values are 0..16
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1) * 2 - 1
    train, val = split(len(y), val_fraction, split_seed)
    # High quality = as close to a real digit as a held-out real digit typically is.
    radius = torch.cdist(x[val].flatten(1), x[train].flatten(1)).min(dim=1).values.median().item()
    task = NearestNeighbourCoverage(x[train], y[train], radius, target)
    return InMemoryData(x[train], y[train], x[val], y[val], 10, batch_size, task=task)
