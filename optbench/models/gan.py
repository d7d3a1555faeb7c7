"""GANs: a generator and a discriminator in one module, trained alternately by `optbench.gan_trainer.GANTrainer`.

`RingGAN` is the multi-layer perceptron pair of the 2-D mixture experiments (Metz et al. 2017,
arXiv:1611.02163); `DCGAN` is Radford et al.'s convolutional pair (2016, arXiv:1511.06434) with
their N(0, 0.02) initialisation, for square images whose side is a power of two from 16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from optbench.errors import ConfigError
from optbench.schema import PositiveInt


class GAN(nn.Module):
    """`generator` (latent -> sample) and `discriminator` (sample -> one logit)."""

    generator: nn.Module
    discriminator: nn.Module
    latent_dim: int

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.generator(torch.randn(n, self.latent_dim, device=device, generator=generator))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def perceptron(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])  # no activation after the last layer


class RingGAN(GAN):
    inputs = ("vectors",)

    def __init__(self, input_shape: Sequence[int], latent_dim: PositiveInt = 16, hidden: PositiveInt = 128,
                 depth: PositiveInt = 2):
        super().__init__()
        (dim,) = input_shape
        self.latent_dim = latent_dim
        self.generator = perceptron([latent_dim, *[hidden] * depth, dim])
        self.discriminator = perceptron([dim, *[hidden] * depth, 1])


class DCGAN(GAN):
    inputs = ("images",)

    def __init__(self, input_shape: Sequence[int], latent_dim: PositiveInt = 100, g_width: PositiveInt = 64,
                 d_width: PositiveInt = 64):
        super().__init__()
        channels, height, width = input_shape
        stages = int(math.log2(height)) - 2  # doublings from 4x4
        if height != width or height < 16 or 2 ** (stages + 2) != height:
            raise ConfigError(f"model=dcgan: needs square images with a side of 16, 32, 64, ...; the data have "
                              f"shape {tuple(input_shape)}.")
        self.latent_dim = latent_dim
        widths = [g_width * 2 ** i for i in reversed(range(stages))]  # e.g. 256, 128, 64
        g: list[nn.Module] = [nn.Unflatten(1, (latent_dim, 1, 1)),
                              nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
                              nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for a, b in zip(widths, widths[1:]):
            g += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        g += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.generator = nn.Sequential(*g)
        widths = [d_width * 2 ** i for i in range(stages)]  # e.g. 64, 128, 256
        d: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        for a, b in zip(widths, widths[1:]):
            d += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2)]
        d += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Flatten()]
        self.discriminator = nn.Sequential(*d)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
