"""The task of GAN workloads: sample quality against known modes instead of a validation loss.

A GAN's data set (`optbench.datasets.gan`) knows where its modes are; these tasks measure the
generated samples against them. GAN training itself is `optbench.gan_trainer.GANTrainer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from optbench.errors import ConfigError
from optbench.tasks import Batch, Task

# Samples drawn for an evaluation, and the fraction of them a mode must get to count as covered.
EVAL_SAMPLES = 2500
COVERED_SHARE = 0.01


class SampleQuality(Task):
    """Metrics of generated samples against known modes: `modes` covered and the fraction `hq` of
    high-quality samples. A sample is high quality within `radius` of its nearest mode (VEEGAN's
    protocol, Srivastava et al. 2017); a mode is covered when at least 1% of the samples are
    high-quality samples of it (stricter than VEEGAN's single sample)."""

    metrics = {"modes": "max", "hq": "max"}
    for_gans = True

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise ConfigError("this data set is for GANs: choose a GAN model (model=gan_ring or model=dcgan).")

    def nearest_mode(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance to the nearest mode, that mode's index) for each sample."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch],
                 autocast: Callable[[], AbstractContextManager[Any]]) -> dict[str, float]:
        """Metrics of samples drawn from the generator (the validation batches are not read)."""
        device = next(model.parameters()).device
        # The same latent draws at every evaluation: the metric moves only because the model does.
        samples = model.sample(EVAL_SAMPLES, torch.Generator(device).manual_seed(0)).float().flatten(1)
        distance, mode = self.nearest_mode(samples)
        hq = distance <= self.radius
        counts = torch.bincount(mode[hq], minlength=self.num_modes)
        return {"modes": float((counts >= COVERED_SHARE * EVAL_SAMPLES).sum()), "hq": hq.float().mean().item()}


class RingCoverage(SampleQuality):
    """Modes are the mixture's centres; high quality is within 3 standard deviations of one."""

    def __init__(self, centers: torch.Tensor, std: float, target: str | None = None):
        super().__init__(target)
        self.centers, self.radius, self.num_modes = centers, 3 * std, len(centers)

    def nearest_mode(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cdist(samples, self.centers.to(samples.device)).min(dim=1)


class NearestNeighbourCoverage(SampleQuality):
    """Modes are the classes of real images; a sample's mode is its nearest real image's class and it
    is high quality when no farther from that image than `radius`, the median distance of a held-out
    real image to its nearest training image."""

    def __init__(self, reference: torch.Tensor, labels: torch.Tensor, radius: float, target: str | None = None):
        super().__init__(target)
        self.reference, self.labels, self.radius = reference.flatten(1), labels, radius
        self.num_modes = int(labels.max()) + 1

    def nearest_mode(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance, index = torch.cdist(samples, self.reference.to(samples.device)).min(dim=1)
        return distance, self.labels.to(samples.device)[index]
