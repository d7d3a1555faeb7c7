"""What a run keeps of its evaluations: the last metrics, the best of each, and the target reached.

A metric's direction (larger or smaller is better) is the task's; an EMA model's metrics
(`ema_<metric>`) follow their plain metric's direction.
"""

from __future__ import annotations

import math
from typing import Any

from optbench.tasks import Task


class ValidationHistory:
    """Fed each evaluation's metrics; `best` and `target_reached` go into checkpoints and summary.json."""

    def __init__(self, task: Task, monitor: str):
        self.task, self.monitor = task, monitor
        self.best: dict[str, float] = {}  # `val/<metric>` -> best value so far
        self.last: dict[str, float] = {}
        self.last_step: int | None = None
        self.target_reached: dict[str, float] = {}  # step, epoch and times of the first evaluation at target

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
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "target_reached": dict(self.target_reached)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state["best"])
        self.target_reached = dict(state.get("target_reached", {}))

    def summary(self) -> dict[str, Any]:
        """The summary's `final` validation metrics, `best`, and `target` (when the task has one)."""
        found: dict[str, Any] = {"final": {f"val/{k}": v for k, v in self.last.items()}, "best": dict(self.best)}
        if self.task.target is not None:
            found["target"] = {"goal": str(self.task.target), "reached": bool(self.target_reached),
                               **self.target_reached}
        return found
