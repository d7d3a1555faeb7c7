"""Learning-rate schedules as plain functions of the optimizer step.

Each schedule is a picklable LR multiplier: `schedule(step)` is the factor applied to every
parameter group's base LR for optimizer step number `step` (0-based), so every group keeps its
own LR scale. optbench wraps it in one `LambdaLR` (`optbench.lr_scheduler.ScheduledLR`),
stepped once per optimizer step; LambdaLR checkpoints a callable object's attributes, so every
attribute here is a plain number, string, bool or list (loadable with `weights_only=True`).

Every schedule takes `warmup`: a linear ramp from 0 (`step / warmup`, the chapter's section 5.5)
to where the schedule proper starts. The schedule proper then runs as if the run began at the
end of the warmup: its clock is `t = step - warmup` and it spans `total_steps - warmup` steps.

Durations (`warmup`, `step_size`, `milestones`, `T_0`, ...) are optimizer steps as an int, a
fraction of the run as a float below 1 (`0.1`), or epochs as a string (`2ep`, `1.5 epochs`).
Floors such as `eta_min` and `min_lr` are LRs of a group at the run's base LR (`base_lr`:
`optimizer.lr`, or the wrapped optimizer's, after `optimizer.lr_scaling`; see
`optbench.lr_scaling.scaled_lr`); a group with k times that LR gets k times the floor.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import Any, Literal, Optional, Union

from optbench.errors import ConfigError
from optbench.schema import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval

Duration = Union[int, float, str]
"""Optimizer steps (int), a fraction of the run (float in [0, 1)) or epochs (`"2ep"`)."""

EPOCHS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:ep|epochs?)\s*$")

DURATION_HELP = "steps as an integer, a fraction of the run below 1 (0.1), or epochs (2ep)"


def mentions_epochs(value: Any) -> bool:
    """Whether a config value (or any value inside it) is a duration in epochs."""
    if isinstance(value, str):
        return EPOCHS.match(value) is not None
    if isinstance(value, dict):
        return any(mentions_epochs(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(mentions_epochs(v) for v in value)
    return False


def floor_ratio(min_lr_ratio: float, key: str, min_lr: float | None, base_lr: float | None) -> float:
    """The LR floor as a fraction of the base LR, from a ratio or from an absolute `min_lr`."""
    if min_lr is None:
        return min_lr_ratio
    if min_lr_ratio:
        raise ConfigError(f"scheduler.{key}={min_lr} and scheduler.min_lr_ratio={min_lr_ratio}: set only one.")
    if not base_lr:
        raise ConfigError(f"scheduler.{key}={min_lr}: needs the optimizer's base LR (optimizer.lr > 0).")
    return min_lr / base_lr


class Schedule:
    """Linear warmup, then `decay(t)` for t = step - warmup over `span` = total - warmup steps."""

    cycle_momentum = False  # whether `momentum()` gives a value to set (OneCycle)
    # Attributes that say where a run stands rather than what the schedule plans: a resume keeps
    # them when it re-plans the schedule for another length (`ScheduledLR.load_state_dict`).
    progress: tuple[str, ...] = ()

    def __init__(
        self,
        total_steps: PositiveInt,
        warmup: Duration = 0,
        steps_per_epoch: Optional[PositiveInt] = None,
    ):
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.warmup = warmup  # as written, for messages
        self.warmup_steps = self.steps("warmup", warmup)
        self.span = max(1, total_steps - self.warmup_steps)

    def steps(self, key: str, value: Duration, minimum: int = 0) -> int:
        """The duration `value` in optimizer steps; ConfigError naming `scheduler.<key>` otherwise."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"scheduler.{key}={value}: must be a duration: {DURATION_HELP}.")
        if isinstance(value, str):
            match = EPOCHS.match(value)
            if match is None:
                raise ConfigError(f"scheduler.{key}={value!r}: not a duration: {DURATION_HELP}.")
            if self.steps_per_epoch is None:
                raise ConfigError(f"scheduler.{key}={value!r}: epochs need the run's steps per epoch.")
            steps = round(float(match.group(1)) * self.steps_per_epoch)
        elif isinstance(value, float):
            if not 0 <= value < 1:
                raise ConfigError(
                    f"scheduler.{key}={value}: a float is a fraction of the run and must be in [0, 1); "
                    f"write steps as an integer or epochs as 2ep."
                )
            steps = round(value * self.total_steps)
        else:
            steps = value
        if steps < minimum:
            shown = value if steps == value else f"{value!r} ({steps} steps)"
            unit = "step" if minimum == 1 else "steps"
            raise ConfigError(f"scheduler.{key}={shown}: must be at least {minimum} {unit}.")
        return steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            # The ramp ends where the schedule proper starts: 1 for all but OneCycle.
            return step / self.warmup_steps * self.decay(0)
        return self.decay(step - self.warmup_steps)

    def decay(self, t: int) -> float:
        return 1.0

    def momentum(self, step: int) -> float | None:
        """The momentum (beta1) of step `step` where the schedule cycles it, else None."""
        return None

    def observe(self, metrics: dict[str, float]) -> bool:
        """See an evaluation's metrics; whether the multiplier changed (only `Plateau` reacts)."""
        return False

    def warmup_problem(self, run_steps: int) -> str | None:
        if self.warmup_steps < run_steps:
            return None
        return (
            f"scheduler.warmup={self.warmup}: the warmup ({self.warmup_steps} steps) is not shorter "
            f"than the run ({run_steps} optimizer steps), so the LR never reaches its peak."
        )

    def warnings(self, run_steps: int) -> list[str]:
        """What about this schedule over a run of `run_steps` steps cannot be what was meant."""
        if self.total_steps == run_steps:
            return []
        which = "the schedule ends before the run" if self.total_steps < run_steps else "the run ends first"
        return [
            f"scheduler.total_steps={self.total_steps}: the schedule is planned for {self.total_steps} "
            f"optimizer steps but the run has {run_steps}: {which}."
        ]


class Constant(Schedule):
    """The base LR throughout (after the warmup, if any)."""


class Step(Schedule):
    """Multiply the LR by `gamma` every `step_size` (torch's StepLR)."""

    def __init__(self, total_steps: PositiveInt, step_size: Duration, gamma: PositiveFloat = 0.1,
                 warmup: Duration = 0, steps_per_epoch: Optional[PositiveInt] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.step_size = self.steps("step_size", step_size, minimum=1)
        self.gamma = gamma

    def decay(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class MultiStep(Schedule):
    """Multiply the LR by `gamma` at each milestone (torch's MultiStepLR)."""

    def __init__(self, total_steps: PositiveInt, milestones: list[Duration], gamma: PositiveFloat = 0.1,
                 warmup: Duration = 0, steps_per_epoch: Optional[PositiveInt] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.milestones = [self.steps("milestones", m, minimum=1) for m in milestones]
        if any(a >= b for a, b in zip(self.milestones, self.milestones[1:])):
            raise ConfigError(
                f"scheduler.milestones={list(milestones)}: must increase strictly "
                f"(in optimizer steps: {self.milestones})."
            )
        self.gamma = gamma

    def decay(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t)


class Exponential(Schedule):
    """Multiply the LR by `gamma` every optimizer step (torch's ExponentialLR, chapter eq. 5.2)."""

    def __init__(self, total_steps: PositiveInt, gamma: PositiveFloat = 0.995, warmup: Duration = 0,
                 steps_per_epoch: Optional[PositiveInt] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.gamma = gamma

    def decay(self, t: int) -> float:
        return self.gamma**t


def half_cosine(t: float, period: float) -> float:
    """1 at t=0 down to 0 at t=period, written as the chapter and torch write it (eq. 5.3)."""
    return 0.5 * (1.0 + math.cos(math.pi * t / period))


class Cosine(Schedule):
    """Cosine decay to `min_lr_ratio` (or `eta_min`) over `T_max`, by default the rest of the run.

    Past `T_max` it rises again, as torch's CosineAnnealingLR does.
    """

    def __init__(self, total_steps: PositiveInt, min_lr_ratio: Fraction = 0.0,
                 eta_min: Optional[NonNegativeFloat] = None, T_max: Optional[Duration] = None,
                 warmup: Duration = 0, steps_per_epoch: Optional[PositiveInt] = None,
                 base_lr: Optional[PositiveFloat] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.floor = floor_ratio(min_lr_ratio, "eta_min", eta_min, base_lr)
        self.T_max_given = T_max
        self.T_max = self.span if T_max is None else self.steps("T_max", T_max, minimum=1)

    def decay(self, t: int) -> float:
        return self.floor + (1.0 - self.floor) * half_cosine(t, self.T_max)

    def warnings(self, run_steps: int) -> list[str]:
        found = super().warnings(run_steps)
        end = self.warmup_steps + self.T_max
        if self.T_max_given is not None and end < run_steps:
            found.append(
                f"scheduler.T_max={self.T_max_given}: the cosine reaches its minimum at step {end}, "
                f"before the run ends ({run_steps} steps); after that the LR rises again."
            )
        return found


class CosineRestarts(Schedule):
    """Cosine decay restarted every `T_0` steps, each period `T_mult` times the last (SGDR;
    torch's CosineAnnealingWarmRestarts)."""

    def __init__(self, total_steps: PositiveInt, T_0: Duration, T_mult: PositiveInt = 1,
                 min_lr_ratio: Fraction = 0.0, eta_min: Optional[NonNegativeFloat] = None,
                 warmup: Duration = 0, steps_per_epoch: Optional[PositiveInt] = None,
                 base_lr: Optional[PositiveFloat] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.T_0 = self.steps("T_0", T_0, minimum=1)
        self.T_mult = T_mult
        self.floor = floor_ratio(min_lr_ratio, "eta_min", eta_min, base_lr)

    def decay(self, t: int) -> float:
        if self.T_mult == 1:
            t_cur, period = t % self.T_0, self.T_0
        else:  # periods grow geometrically: a few iterations reach any step
            t_cur, period = t, self.T_0
            while t_cur >= period:
                t_cur -= period
                period *= self.T_mult
        return self.floor + (1.0 - self.floor) * half_cosine(t_cur, period)


class OneCycle(Schedule):
    """The 1cycle policy (Smith & Topin 2017, arXiv:1708.07120), as torch's OneCycleLR computes it.

    `optimizer.lr` is the peak (torch's `max_lr`): the LR rises from peak/div_factor to the peak
    over `pct_start` of the schedule, then falls to peak/(div_factor*final_div_factor). With
    `cycle_momentum`, momentum (beta1 for Adam-style optimizers) moves the opposite way between
    `max_momentum` and `base_momentum`. Past its end it holds its final values.
    """

    def __init__(self, total_steps: PositiveInt, pct_start: UnitInterval = 0.3,
                 anneal_strategy: Literal["cos", "linear"] = "cos", div_factor: PositiveFloat = 25.0,
                 final_div_factor: PositiveFloat = 1e4, three_phase: bool = False,
                 cycle_momentum: bool = True, base_momentum: Fraction = 0.85, max_momentum: Fraction = 0.95,
                 warmup: Duration = 0, steps_per_epoch: Optional[PositiveInt] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = cycle_momentum
        start, peak = 1.0 / div_factor, 1.0
        end = start / final_div_factor
        rise_end = float(pct_start * self.span) - 1
        # Phases as torch builds them: [last step, LR from, LR to, momentum from, momentum to].
        if three_phase:
            self.phases = [
                [rise_end, start, peak, max_momentum, base_momentum],
                [float(2 * pct_start * self.span) - 2, peak, start, base_momentum, max_momentum],
                [self.span - 1, start, end, max_momentum, max_momentum],
            ]
        else:
            self.phases = [
                [rise_end, start, peak, max_momentum, base_momentum],
                [self.span - 1, peak, end, base_momentum, max_momentum],
            ]

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _where(self, t: int) -> tuple[list[float], float]:
        """The phase that step t is in and how far into it (0 to 1)."""
        phase_start = 0.0
        for i, phase in enumerate(self.phases):
            phase_end = phase[0]
            if t <= phase_end or i == len(self.phases) - 1:
                length = phase_end - phase_start
                return phase, min(1.0, (t - phase_start) / length) if length > 0 else 1.0
            phase_start = phase_end
        raise AssertionError("unreachable: the last phase takes every step")

    def decay(self, t: int) -> float:
        phase, pct = self._where(t)
        return self._anneal(phase[1], phase[2], pct)

    def momentum(self, step: int) -> float | None:
        if not self.cycle_momentum:
            return None
        phase, pct = self._where(max(0, step - self.warmup_steps))
        return self._anneal(phase[3], phase[4], pct)


class Polynomial(Schedule):
    """`(1 - t/span) ** power` down to 0 at the end of the run (chapter section 5.7); `power=1`
    is BERT's linear decay (transformers' get_linear_schedule_with_warmup)."""

    def __init__(self, total_steps: PositiveInt, power: PositiveFloat = 1.0, warmup: Duration = 0,
                 steps_per_epoch: Optional[PositiveInt] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.power = power

    def decay(self, t: int) -> float:
        # (span - t) / span rather than 1 - t/span: no cancellation near the end of the run.
        return (max(0, self.span - t) / self.span) ** self.power


class InverseSqrt(Schedule):
    """`1 / sqrt((t + timescale) / timescale)` after the warmup (Vaswani et al. 2017; written as
    transformers' get_inverse_sqrt_schedule). `timescale` defaults to the warmup, else 10,000."""

    def __init__(self, total_steps: PositiveInt, timescale: Optional[Duration] = None, warmup: Duration = 0,
                 steps_per_epoch: Optional[PositiveInt] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        if timescale is None:
            self.timescale = self.warmup_steps or 10_000
        else:
            self.timescale = self.steps("timescale", timescale, minimum=1)

    def decay(self, t: int) -> float:
        return 1.0 / math.sqrt((t + self.timescale) / self.timescale)


class WarmupStableDecay(Schedule):
    """Warmup, a constant stage, then a decay to `min_lr_ratio` over the last `decay_length`
    (Hägele et al. 2024, arXiv:2405.18392; shapes as in transformers' get_wsd_schedule)."""

    def __init__(self, total_steps: PositiveInt, decay_length: Duration = 0.2,
                 decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt", min_lr_ratio: Fraction = 0.0,
                 warmup: Duration = 0, steps_per_epoch: Optional[PositiveInt] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.decay_steps = self.steps("decay_length", decay_length, minimum=1)
        if self.decay_steps > self.span:
            raise ConfigError(
                f"scheduler.decay_length={decay_length}: {self.decay_steps} steps do not fit in the "
                f"{self.span} steps after the warmup."
            )
        self.stable_steps = self.span - self.decay_steps
        self.decay_shape = decay_shape
        self.min_lr_ratio = min_lr_ratio

    def decay(self, t: int) -> float:
        if t < self.stable_steps:
            return 1.0
        progress = min(1.0, (t - self.stable_steps) / self.decay_steps)
        if self.decay_shape == "linear":
            value = 1.0 - progress
        elif self.decay_shape == "cosine":
            value = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            value = 1.0 - math.sqrt(progress)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * value


class Plateau(Schedule):
    """Multiply the LR by `factor` when validation `metric` stops improving (torch's
    ReduceLROnPlateau, without its `eps`). `patience` and `cooldown` count evaluations
    (`trainer.eval_every`); the new LR applies from the next optimizer step."""

    progress = ("level", "best", "bad_evaluations", "cooldown_left")

    def __init__(self, total_steps: PositiveInt, metric: str = "loss", mode: Literal["min", "max"] = "min",
                 factor: UnitInterval = 0.1, patience: NonNegativeInt = 10, threshold: NonNegativeFloat = 1e-4,
                 threshold_mode: Literal["rel", "abs"] = "rel", cooldown: NonNegativeInt = 0,
                 min_lr: Optional[NonNegativeFloat] = None, warmup: Duration = 0,
                 steps_per_epoch: Optional[PositiveInt] = None, base_lr: Optional[PositiveFloat] = None):
        super().__init__(total_steps, warmup, steps_per_epoch)
        self.metric = metric.removeprefix("val/")
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode, self.cooldown = threshold, threshold_mode, cooldown
        self.floor = floor_ratio(0.0, "min_lr", min_lr, base_lr)
        self.level = 1.0  # the product of the reductions so far
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evaluations = 0
        self.cooldown_left = 0

    def decay(self, t: int) -> float:
        return self.level

    def _improves(self, value: float) -> bool:
        relative = self.threshold_mode == "rel"
        if self.mode == "min":
            return value < (self.best * (1.0 - self.threshold) if relative else self.best - self.threshold)
        return value > (self.best * (1.0 + self.threshold) if relative else self.best + self.threshold)

    def observe(self, metrics: dict[str, float]) -> bool:
        if self.metric not in metrics:
            raise ConfigError(
                f"scheduler.metric={self.metric!r}: the evaluation logs only {', '.join(metrics)}."
            )
        value = float(metrics[self.metric])
        if self._improves(value):
            self.best, self.bad_evaluations = value, 0
        else:
            self.bad_evaluations += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evaluations = 0  # evaluations in the cooldown do not count
        if self.bad_evaluations <= self.patience:
            return False
        self.cooldown_left, self.bad_evaluations = self.cooldown, 0
        old, self.level = self.level, max(self.level * self.factor, self.floor)
        return self.level != old
