"""Learning-rate schedules as plain functions of the optimizer step.

Each schedule is a picklable LR multiplier: `schedule(step)` is the factor applied to every
parameter group's base LR for optimizer step number `step` (0-based). optbench wraps it in one
`torch.optim.lr_scheduler.LambdaLR`, stepped once per optimizer step, so per-group LR scales
and checkpoints stay right (LambdaLR saves a callable object's attributes).

Every schedule takes `warmup`: a linear ramp `step / warmup` in front of it (the chapter's
section 5.5), given in steps (int) or as a fraction of the run (float below 1). The schedule
proper then runs over the remaining `total_steps - warmup` steps.
"""

from __future__ import annotations

import math

from optbench.errors import ConfigError
from optbench.schema import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt


def resolve_steps(key: str, value: int | float, total_steps: int) -> int:
    """Steps from an int, or from a float fraction (< 1) of the run."""
    if isinstance(value, float):
        if not 0 <= value < 1:
            raise ConfigError(f"{key}={value}: a float is a fraction of the run and must be in [0, 1).")
        return round(value * total_steps)
    if value < 0:
        raise ConfigError(f"{key}={value}: must be >= 0 steps.")
    if value > total_steps:
        raise ConfigError(f"{key}={value}: longer than the run ({total_steps} optimizer steps).")
    return value


class Schedule:
    """Linear warmup, then `decay(t, span)` for t in [0, span), span = total - warmup."""

    def __init__(self, total_steps: PositiveInt, warmup: NonNegativeFloat = 0):
        self.total_steps = total_steps
        self.warmup_steps = resolve_steps("scheduler.warmup", warmup, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        return self.decay(step - self.warmup_steps, max(1, self.total_steps - self.warmup_steps))

    def decay(self, t: int, span: int) -> float:
        return 1.0


class Constant(Schedule):
    """The base LR throughout (after the warmup, if any)."""


class Step(Schedule):
    """Multiply the LR by `gamma` every `step_size` optimizer steps (torch's StepLR)."""

    def __init__(
        self,
        total_steps: PositiveInt,
        step_size: PositiveInt,
        gamma: PositiveFloat = 0.1,
        warmup: NonNegativeFloat = 0,
    ):
        super().__init__(total_steps, warmup)
        self.step_size = step_size
        self.gamma = gamma

    def decay(self, t: int, span: int) -> float:
        return self.gamma ** (t // self.step_size)


class Cosine(Schedule):
    """Cosine decay from the base LR to `min_lr_ratio` times it (chapter eq. 5.3)."""

    def __init__(self, total_steps: PositiveInt, min_lr_ratio: Fraction = 0.0, warmup: NonNegativeFloat = 0):
        super().__init__(total_steps, warmup)
        self.min_lr_ratio = min_lr_ratio

    def decay(self, t: int, span: int) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * t / span))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine
