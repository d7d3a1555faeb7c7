"""What a run keeps of its evaluations: the last metrics, the best of each, the target reached,
and whether the monitored metric has stopped improving (early stopping).

A metric's direction (larger or smaller is better) is the task's; an EMA model's metrics
(`ema_<metric>`) follow their plain metric's direction. Early stopping follows `trainer.monitor`
and `trainer.monitor_mode`, the metric and direction that rank runs.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optbench.schema import EarlyStoppingConfig, TrainerConfig
from optbench.tasks import Task


class EarlyStopping:
    """Stop after `patience` evaluations in a row in which the monitored metric did not beat its
    best by more than `min_delta` (a non-finite value never does)."""

    def __init__(self, monitor: str, mode: str, settings: EarlyStoppingConfig):
        self.monitor, self.maximize = monitor, mode == "max"
        self.patience, self.min_delta = settings.patience, settings.min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.waited = 0  # evaluations since the last improvement: state that a resume must keep
        self.stopped_at: int | None = None  # the step at which the run was stopped

    @property
    def stop(self) -> bool:
        return self.stopped_at is not None

    def observe(self, value: float | None, step: int) -> None:
        if self.patience is None or self.stop:
            return
        if value is not None and math.isfinite(value) and (self.best is None or self._improves(value)):
            self.best, self.best_step, self.waited = value, step, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            self.stopped_at = step

    def _improves(self, value: float) -> bool:
        assert self.best is not None
        return value - self.best > self.min_delta if self.maximize else self.best - value > self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "waited": self.waited, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.waited, self.stopped_at = state["waited"], state["stopped_at"]

    def summary(self) -> dict[str, Any]:
        """summary.json `early_stopping`: the settings, whether they stopped the run, and why."""
        found: dict[str, Any] = {"patience": self.patience, "min_delta": self.min_delta,
                                 "metric": f"val/{self.monitor}", "stopped_early": self.stop, "best": self.best,
                                 "best_step": self.best_step, "stopped_at": self.stopped_at}
        if self.stop:
            found["reason"] = (f"val/{self.monitor} did not improve on its best, {self.best:.6g} at step "
                               f"{self.best_step}, by more than {self.min_delta:g} in {self.patience} evaluations")
        return found


class ValidationHistory:
    """Fed each evaluation's metrics; `best` and `target_reached` go into checkpoints and summary.json."""

    def __init__(self, task: Task, monitor: str, early_stopping: EarlyStopping | None = None):
        self.task, self.monitor = task, monitor
        self.best: dict[str, float] = {}  # `val/<metric>` -> best value so far
        self.last: dict[str, float] = {}
        self.last_step: int | None = None
        self.target_reached: dict[str, float] = {}  # step, epoch and times of the first evaluation at target
        self.early_stopping = early_stopping

    def record(self, metrics: dict[str, float], step: int, when: dict[str, float]) -> bool:
        """Take one evaluation at optimizer step `step` (`when`: its epoch and times); whether the
        monitored metric reached a new best (a new `best.pt`)."""
        improved = False
        for name, value in metrics.items():
            mode = self.task.metrics.get(name.removeprefix("ema_"), "min")
            key = f"val/{name}"
            better = key not in self.best or (value > self.best[key]) == (mode == "max")
            if math.isfinite(value) and better and value != self.best.get(key):
                self.best[key] = value
                improved |= name == self.monitor
        self.last, self.last_step = dict(metrics), step
        target = self.task.target
        if target is not None and not self.target_reached and target.met(metrics):
            self.target_reached = {"step": step, **when}
        if self.early_stopping is not None:
            self.early_stopping.observe(metrics.get(self.monitor), step)
        return improved

    @property
    def stop(self) -> bool:
        """Whether early stopping has ended the run."""
        return self.early_stopping is not None and self.early_stopping.stop

    def state_dict(self) -> dict[str, Any]:
        state = {"best": dict(self.best), "target_reached": dict(self.target_reached)}
        if self.early_stopping is not None:
            state["early_stopping"] = self.early_stopping.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state["best"])
        self.target_reached = dict(state.get("target_reached", {}))
        if self.early_stopping is not None and "early_stopping" in state:
            self.early_stopping.load_state_dict(state["early_stopping"])

    def summary(self) -> dict[str, Any]:
        """The summary's `final` validation metrics, `best`, and `target` (when the task has one)."""
        found: dict[str, Any] = {"final": {f"val/{k}": v for k, v in self.last.items()}, "best": dict(self.best)}
        if self.task.target is not None:
            found["target"] = {"goal": str(self.task.target), "reached": bool(self.target_reached),
                               **self.target_reached}
        if self.early_stopping is not None:
            found["early_stopping"] = self.early_stopping.summary()
        return found


def early_stopping_problems(cfg: DictConfig, logged: list[str]) -> list[str]:
    """`trainer.early_stopping.patience` that could never stop the run: its `trainer.monitor` is
    never logged, or the run evaluates only at its end. `logged`: the run's validation metrics."""
    from optbench.build import build_data, run_length

    trainer = cfg.trainer
    patience = OmegaConf.select(trainer, "early_stopping.patience")
    if patience is None:
        return []
    key = f"trainer.early_stopping.patience={patience}"
    if trainer.monitor not in logged:
        return [f"{key}: trainer.monitor={trainer.monitor!r} is never logged (this workload's evaluation logs "
                f"{', '.join(logged)}), so nothing could stop the run; set trainer.monitor to one of them, or "
                f"trainer.early_stopping.patience=null."]
    tc = TrainerConfig.from_mapping(OmegaConf.to_container(trainer, resolve=True))
    needs_data = tc.max_steps is None or tc.eval_every is None
    total, per_epoch = run_length(tc, build_data(cfg.data) if needs_data else None)
    every = tc.eval_every or per_epoch
    assert every is not None
    if every >= total:
        when = f"trainer.eval_every={tc.eval_every}" if tc.eval_every else f"once an epoch, {per_epoch} steps"
        return [f"{key}: the run evaluates only at its end ({when}, in a run of {total} steps), so early "
                f"stopping could never stop it; set trainer.eval_every below {total}, or "
                f"trainer.early_stopping.patience=null."]
    return []
