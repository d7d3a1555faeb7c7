"""GAN training: a generator and a discriminator updated alternately, each with its own optimizer
and scheduler (`gan.g`, `gan.d`, `gan.g_scheduler`, `gan.d_scheduler`).

The losses are the standard non-saturating ones (Goodfellow et al. 2014): the discriminator
minimises BCE(D(real), 1) + BCE(D(G(z)), 0) and the generator BCE(D(G(z)), 1). Each optimizer step
is one discriminator update then one generator update on the same batch (the chapter's recipe 4),
each through the same `UpdateStep` as any run: accumulation, AMP, clipping, the non-finite check,
diagnostics and the EMA (of the whole model, after the generator's update) apply to both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from optbench.build import build_optimizer, build_scheduler
from optbench.diagnostics import Diagnostics
from optbench.errors import ConfigError
from optbench.lr_scaling import scaled_optimizer
from optbench.optim.base import say_compiling
from optbench.tasks import Batch
from optbench.trainer import Trainer
from optbench.update import StepResult, UpdateStep

Record = dict[str, dict[str, float]]


class GANTrainer(Trainer):
    """`Trainer` with a generator/discriminator pair. `self.update` (its optimizer and scheduler)
    is the generator's, whose LR is the logged `lr`; the discriminator's is `self.d_update`."""

    def build_updates(self) -> UpdateStep:
        if not all(hasattr(self.model, n) for n in ("generator", "discriminator", "sample")):
            raise ConfigError(f"gan: {type(self.model).__name__} is not a GAN (no generator and discriminator); "
                              f"choose model=gan_ring or model=dcgan, or remove the gan settings (~gan).")
        if self.tc.compile:  # a GAN calls its networks directly (sample, discriminator): each is compiled
            for name in ("generator", "discriminator"):
                say_compiling(f"the {name}")
                getattr(self.model, name).compile()  # in place: its state_dict keys stay as they are
        self.d_update = self._network_update(self.model.discriminator, "d", ema=None)
        self._d_weights = [p for p in self.model.discriminator.parameters() if p.requires_grad]
        self._d_loss_sum = torch.zeros((), device=self.device)
        self._d_loss_count = 0
        self._label_cache = (torch.ones(0, 1), torch.zeros(0, 1))
        return self._network_update(self.model.generator, "g", ema=self.ema)

    def _network_update(self, net: torch.nn.Module, name: str, ema: Any) -> UpdateStep:
        node, base_lr = scaled_optimizer(self.cfg.gan[name], self.effective_batch)
        if name == "g":  # the generator's is the run's base LR (its `lr` is the one logged)
            self.base_lr = base_lr
        optimizer = build_optimizer(node, net, self.cfg.params)
        scheduler = build_scheduler(self.cfg.gan[f"{name}_scheduler"], optimizer, self.total_steps,
                                    self.steps_per_epoch, base_lr.value)
        diagnostics = Diagnostics(net, optimizer, self.tc.diagnostics_every)
        # foreign_grads=False: D's loss sees the fakes detached, and G's update runs with D's weights
        # frozen (train_step), so each network's gradients come from its own update alone.
        return UpdateStep(net, optimizer, self.tc, self.device, scheduler, ema, diagnostics, foreign_grads=False)

    def train_step(self, micro_batches: list[Batch], measure: bool) -> StepResult:
        """One discriminator update, then one generator update; the generator's result."""
        discriminator, fakes = self.model.discriminator, []

        def d_loss(batch: Batch) -> torch.Tensor:
            real = batch[0]
            ones, zeros = self._labels(len(real))
            fakes.append(self.model.sample(len(real)))  # kept (with its graph) for G's update
            return (F.binary_cross_entropy_with_logits(discriminator(real).float(), ones)
                    + F.binary_cross_entropy_with_logits(discriminator(fakes[-1].detach()).float(), zeros))

        def g_loss(batch: Batch) -> torch.Tensor:
            fake = next(fakes_for_g)  # the samples D was just updated on, micro-batch by micro-batch
            return F.binary_cross_entropy_with_logits(discriminator(fake).float(), self._labels(len(fake))[0])

        step = self.step + 1
        d_result = self.d_update(micro_batches, d_loss, step, measure=False)
        fakes_for_g = iter(fakes)
        # G's backward runs through D: with D's weights frozen it computes no gradient for them (a
        # third of its work, which D's next update would throw away), as GAN codebases do.
        with frozen(self._d_weights):
            result = self.update(micro_batches, g_loss, step, measure)
        if d_result.loss is not None:
            self._d_loss_sum += d_result.loss
            self._d_loss_count += 1
        result.diagnostics = _merge({"generator": result.diagnostics, "discriminator": d_result.diagnostics})
        return result

    def updates(self) -> list[UpdateStep]:
        return [self.update, self.d_update]

    def _labels(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets 1 (real) and 0 (fake) for a batch of n, made once per batch size."""
        if self._label_cache[0].shape[0] != n:
            self._label_cache = (torch.ones(n, 1, device=self.device), torch.zeros(n, 1, device=self.device))
        return self._label_cache

    def interval_metrics(self) -> dict[str, float]:
        """The discriminator's mean loss and its LR over the logging interval."""
        d_loss = (self._d_loss_sum / max(self._d_loss_count, 1)).item()
        self._d_loss_sum, self._d_loss_count = torch.zeros((), device=self.device), 0
        return {"d_loss": d_loss, "d_lr": self.d_update.optimizer.param_groups[0]["lr"]}

    def state_dict(self) -> dict[str, Any]:
        d = self.d_update
        return {**super().state_dict(), "d_optimizer": d.optimizer.state_dict(),
                "d_scheduler": d.scheduler.state_dict(), "d_scaler": d.scaler.state_dict(),
                "d_skipped_steps": d.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        d = self.d_update
        d.optimizer.load_state_dict(state["d_optimizer"])
        d.scheduler.load_state_dict(state["d_scheduler"])
        d.scaler.load_state_dict(state["d_scaler"])
        d.skipped = state["d_skipped_steps"]

    def summary(self, status: str) -> dict[str, Any]:
        summary = super().summary(status)
        summary["skipped_steps"] += self.d_update.skipped
        return summary


@contextmanager
def frozen(weights: list[torch.Tensor]) -> Iterator[None]:
    """`weights` need no gradient inside: backward passes through them compute none for them."""
    for w in weights:
        w.requires_grad_(False)
    try:
        yield
    finally:
        for w in weights:
            w.requires_grad_(True)


def _merge(records: dict[str, Record | None]) -> Record | None:
    """The diagnostics of both networks as one record, each name prefixed with its network."""
    merged: Record = {}
    for network, record in records.items():
        for kind, values in (record or {}).items():
            merged.setdefault(kind, {}).update({f"{network}.{name}": v for name, v in values.items()})
    return merged or None


def trainer_class(cfg: Any) -> type[Trainer]:
    """`GANTrainer` for a config with `gan` settings (a GAN model brings them), else `Trainer`."""
    return GANTrainer if cfg.get("gan") is not None else Trainer
