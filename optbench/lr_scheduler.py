"""The torch scheduler that drives an `optbench.schedules.Schedule`: one LambdaLR, stepped once per
optimizer step, that also sets cycled momentum and lets a schedule react to validation metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from optbench.errors import ConfigError
from optbench.schedules import Schedule


class ScheduledLR(LambdaLR):
    """`group["lr"] = base_lr * schedule(step)` for every group, so each keeps its own scale.

    The schedule is LambdaLR's one `lr_lambda`; its attributes are what `state_dict` saves, so a
    restored scheduler continues where it stopped (plateau's counters included).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule):
        if schedule.cycle_momentum and not {"momentum", "betas"} & optimizer.defaults.keys():
            raise ConfigError(
                f"scheduler.cycle_momentum=true: {type(optimizer).__name__} has neither momentum nor "
                f"betas to cycle; set scheduler.cycle_momentum=false."
            )
        super().__init__(optimizer, schedule)

    @property
    def schedule(self) -> Schedule:
        return self.lr_lambdas[0]

    @property
    def cycle_momentum(self) -> bool:
        """Whether momentum is cycled (the attribute name torch's OneCycleLR uses)."""
        return self.schedule.cycle_momentum

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        momentum = self.schedule.momentum(self.last_epoch)
        if momentum is None:
            return
        for group in self.optimizer.param_groups:
            if "betas" in group:  # Adam-style: beta1 is the momentum, as torch's OneCycleLR does
                group["betas"] = (momentum, *group["betas"][1:])
            else:
                group["momentum"] = momentum

    def observe(self, metrics: dict[str, float]) -> None:
        """Show the schedule an evaluation's metrics; a changed LR applies from the next step on."""
        if not self.schedule.observe(metrics):
            return
        factor = self.schedule(self.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def cycled_momenta(scheduler: Any) -> list[float]:
    """Each group's momentum (beta1 for Adam-style optimizers) if `scheduler` cycles it, else []."""
    if not getattr(scheduler, "cycle_momentum", False):
        return []
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in scheduler.optimizer.param_groups]
