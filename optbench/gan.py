"""GAN training: a generator and a discriminator updated alternately, each with its own optimizer
and scheduler (`gan.g`, `gan.d`, `gan.g_scheduler`, `gan.d_scheduler`), and the sample-quality
metrics that GAN workloads evaluate instead of a validation loss.

The losses are the standard non-saturating ones (Goodfellow et al. 2014): the discriminator
minimises BCE(D(real), 1) + BCE(D(G(z)), 0) and the generator BCE(D(G(z)), 1). Each optimizer step
is one discriminator update then one generator update on the same batch (the chapter's recipe 4).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optbench.build import build_optimizer, build_scheduler
from optbench.errors import ConfigError
from optbench.tasks import Batch, Task
from optbench.trainer import Trainer

# Samples drawn for an evaluation, and the fraction of them a mode must get to count as covered.
EVAL_SAMPLES = 2500
COVERED_SHARE = 0.01


class SampleQuality(Task):
    """Metrics of generated samples against known modes: `modes` covered and the fraction `hq` of
    high-quality samples. A sample is high quality within `radius` of its nearest mode (VEEGAN's
    protocol, Srivastava et al. 2017); a mode is covered when at least 1% of the samples are
    high-quality samples of it (stricter than VEEGAN's single sample)."""

    metrics = {"modes": "max", "hq": "max"}

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise ConfigError("this data set is for GANs: choose a GAN model (model=gan_ring or model=dcgan).")

    def nearest_mode(self, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance to the nearest mode, that mode's index) for each sample."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
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


class GANTrainer(Trainer):
    """`Trainer` with a generator/discriminator pair. `self.optimizer` and `self.scheduler` are the
    generator's (its LR is the logged `lr`); the discriminator's are `d_optimizer`, `d_scheduler`."""

    def build_optimization(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        if not all(hasattr(self.model, n) for n in ("generator", "discriminator", "sample")):
            raise ConfigError(f"gan: {type(self.model).__name__} is not a GAN (no generator and discriminator); "
                              f"choose model=gan_ring or model=dcgan, or remove the gan settings (~gan).")
        if self.tc.precision == "16":
            raise ConfigError("trainer.precision=16: GAN training here has no loss scaling; use bf16 or 32.")
        gan, length = self.cfg.gan, (self.total_steps, self.steps_per_epoch)
        self.d_optimizer = build_optimizer(gan.d, self.model.discriminator, self.cfg.params)
        self.d_scheduler = build_scheduler(gan.d_scheduler, self.d_optimizer, *length)
        optimizer = build_optimizer(gan.g, self.model.generator, self.cfg.params)
        self._d_loss_sum = torch.zeros((), device=self.device)
        self._d_loss_count = 0
        self._label_cache = (torch.ones(0, 1), torch.zeros(0, 1))
        return optimizer, build_scheduler(gan.g_scheduler, optimizer, *length)

    def train_step(self, micro_batches: list[Batch], measure: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One discriminator update, then one generator update; returns (generator loss, its grad norm)."""
        # Micro-batches together make one GAN step (no copy for the usual single one).
        real = micro_batches[0][0] if len(micro_batches) == 1 else torch.cat([x for x, _ in micro_batches])
        ones, zeros = self._labels(len(real))
        with self._autocast():
            fake = self.model.sample(len(real))
            d_loss = (F.binary_cross_entropy_with_logits(self.model.discriminator(real).float(), ones)
                      + F.binary_cross_entropy_with_logits(self.model.discriminator(fake.detach()).float(), zeros))
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self._clip(self.model.discriminator, measure=False)
        self.d_optimizer.step()

        with self._autocast():
            g_loss = F.binary_cross_entropy_with_logits(self.model.discriminator(fake).float(), ones)
        self.optimizer.zero_grad(set_to_none=True)
        g_loss.backward()  # also leaves gradients on D, cleared before D's next update
        grad_norm = self._clip(self.model.generator, measure)
        self.optimizer.step()

        self.step_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.step_momenta = []
        self.scheduler.step()
        self.d_scheduler.step()
        self._d_loss_sum += d_loss.detach()
        self._d_loss_count += 1
        return g_loss.detach(), grad_norm

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, self.d_optimizer]

    def _labels(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets 1 (real) and 0 (fake) for a batch of n, made once per batch size."""
        if self._label_cache[0].shape[0] != n:
            self._label_cache = (torch.ones(n, 1, device=self.device), torch.zeros(n, 1, device=self.device))
        return self._label_cache

    def _clip(self, net: nn.Module, measure: bool) -> torch.Tensor | None:
        """Clip one network's gradients as `trainer.clip_norm` / `clip_value` say; its norm if asked."""
        params = [p for p in net.parameters() if p.grad is not None]
        norm = None
        if self.tc.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.tc.clip_norm, self.tc.clip_norm_type)
        elif measure:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], self.tc.clip_norm_type)
        if self.tc.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.tc.clip_value)
        return norm

    def interval_metrics(self) -> dict[str, float]:
        """The discriminator's mean loss and its LR over the logging interval."""
        d_loss = (self._d_loss_sum / max(self._d_loss_count, 1)).item()
        self._d_loss_sum, self._d_loss_count = torch.zeros((), device=self.device), 0
        return {"d_loss": d_loss, "d_lr": self.d_optimizer.param_groups[0]["lr"]}

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        return self.task.evaluate(model)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "d_optimizer": self.d_optimizer.state_dict(),
                "d_scheduler": self.d_scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.d_scheduler.load_state_dict(state["d_scheduler"])

    def summary(self, status: str) -> dict[str, Any]:
        summary = super().summary(status)
        summary["optimizer_state_bytes"] += sum(t.numel() * t.element_size() for s in self.d_optimizer.state.values()
                                                for t in s.values() if isinstance(t, torch.Tensor))
        return summary


def trainer_class(cfg: Any) -> type[Trainer]:
    """`GANTrainer` for a config with `gan` settings (a GAN model brings them), else `Trainer`."""
    return GANTrainer if cfg.get("gan") is not None else Trainer
