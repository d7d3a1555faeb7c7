"""The torch scheduler that drives an `optbench.schedules.Schedule`: one LambdaLR, stepped once per
optimizer step, that also sets cycled momentum and lets a schedule react to validation metrics."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from optbench.errors import ConfigError
from optbench.schedules import Schedule

log = logging.getLogger("optbench")


class ScheduledLR(LambdaLR):
    """`group["lr"] = base_lr * schedule(step)` for every group, so each keeps its own scale.

    The schedule is LambdaLR's one `lr_lambda`; its attributes are what `state_dict` saves, so a
    restored scheduler continues where it stopped (plateau's counters included), re-planned when
    this run's schedule differs from the checkpoint's (`load_state_dict`).
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
        if self.schedule.cycle_momentum:  # most schedules do not: asked here, not in a call each step
            self._set_momentum()

    def _set_momentum(self) -> None:
        momentum = self.schedule.momentum(self.last_epoch)
        if momentum is None:
            return
        for group in self.optimizer.param_groups:
            if "betas" in group:  # Adam-style: beta1 is the momentum, as torch's OneCycleLR does
                group["betas"] = (momentum, *group["betas"][1:])
            else:
                group["momentum"] = momentum

    def _follow_schedule(self) -> None:
        """Set every group's LR (and cycled momentum) to the schedule's at the current step."""
        factor = self.schedule(self.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self._set_momentum()

    def observe(self, metrics: dict[str, float]) -> None:
        """Show the schedule an evaluation's metrics; a changed LR applies from the next step on."""
        if self.schedule.observe(metrics):
            self._follow_schedule()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a checkpoint's schedule; re-planned for this run where its plan differs.

        A resume of the same run restores the checkpoint as it was saved, so the run goes on
        bitwise as if it had never stopped. A run resumed with another length (an extended run,
        `trainer.max_steps=40` after 20) or other scheduler settings gets the schedule that this
        run's config plans, as timm and transformers' Trainer do (both build the schedule from the
        current arguments and continue its step count): the checkpoint gives where the schedule
        stands (the step, Plateau's reductions), the config what it does from there. The old plan
        would end a cosine at the old length and then wrap it up again; refusing would leave no
        way to extend a finished run. The LR jumps to the new plan's at the resumed step, so the
        log says so. (A torch scheduler given the run's length, OneCycleLR, holds it in state that
        cannot be re-planned from outside: `optbench.config` refuses such a resume before the run.)
        """
        saved = state_dict["lr_lambdas"][0]
        schedule = self.schedule
        kept = schedule.progress

        def plan(attributes: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in attributes.items() if k not in kept}

        if plan(saved) == plan(vars(schedule)):
            super().load_state_dict(state_dict)
            return
        old = copy.copy(schedule)
        old.__dict__.update(saved)
        super().load_state_dict({**state_dict, "lr_lambdas": [{k: saved[k] for k in kept if k in saved}]})
        self._follow_schedule()
        if old.total_steps != schedule.total_steps:
            why = (f"was planned for {old.total_steps} optimizer steps and this run has "
                   f"{schedule.total_steps}")
        else:
            changed = sorted(k for k in plan(vars(schedule)) if saved.get(k) != vars(schedule)[k])
            why = f"differs from this run's scheduler settings ({', '.join(changed)})"
        log.warning("trainer.resume: the checkpoint's schedule (%s) %s: re-planned for this run, so step %d "
                    "runs at %.4g times the base LR (the checkpoint's plan: %.4g times)", type(schedule).__name__,
                    why, self.last_epoch + 1, schedule(self.last_epoch), old(self.last_epoch))


def cycled_momenta(scheduler: Any) -> list[float]:
    """Each group's momentum (beta1 for Adam-style optimizers) if `scheduler` cycles it, else []."""
    if not getattr(scheduler, "cycle_momentum", False):
        return []
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in scheduler.optimizer.param_groups]
