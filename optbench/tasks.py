"""What a workload computes from a batch: the training loss, the evaluation metrics, and a target.

The data names its task (`data.task`): class labels give `Classification`, token sequences give
`TokenPrediction`. A data set's function declares the class of that task (`declares_task`), so
that what a run logs is known from its config alone, before any data are built. A task's
`target` (for example `acc >= 0.93`) is the goal that a run records reaching: the first
evaluation that meets it, its step and its time, in summary.json.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from optbench import distributed
from optbench.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]

DataFunction = TypeVar("DataFunction", bound=Callable[..., Any])

IGNORE = -100  # label of a position that carries no loss (cross_entropy's ignore_index)

TARGET = re.compile(r"^\s*(?:val/)?(\w+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Target:
    """`metric >= value` or `metric <= value` on the validation metrics."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str | None, metrics: dict[str, str], key: str = "data.target") -> Target | None:
        """A target from text such as `val/acc >= 0.93`; None for null. `metrics`: the task's."""
        if text is None:
            return None
        match = TARGET.match(str(text))
        if match is None:
            raise ConfigError(f"{key}={text!r}: must read METRIC >= NUMBER or METRIC <= NUMBER "
                              f"(e.g. 'val/acc >= 0.93').")
        metric, op, value = match.group(1), match.group(2), float(match.group(3))
        if metric not in metrics:
            raise ConfigError(f"{key}={text!r}: this workload logs no metric {metric!r}; "
                              f"it logs {', '.join(metrics)}.")
        return cls(metric, op, value)

    def met(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.metric, math.nan)
        return math.isfinite(value) and {">=": operator.ge, "<=": operator.le}[self.op](value, self.value)

    def __str__(self) -> str:
        return f"val/{self.metric} {self.op} {self.value:g}"


class Task:
    """Base of the tasks: validation metrics with their direction, and the run's target."""

    # Validation metrics and whether larger is better (for `best` in summary.json).
    metrics: ClassVar[dict[str, str]] = {}
    # Whether the data are samples for a GAN to imitate (no loss of their own to train a model on).
    for_gans: ClassVar[bool] = False

    def __init__(self, target: str | None = None):
        self.target = Target.parse(target, self.metrics)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch],
                 autocast: Callable[[], AbstractContextManager[Any]]) -> dict[str, float]:
        """Each metric's mean over the validation samples (over every rank's share under torchrun),
        from the per-batch sums of `eval_sums`."""
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in batches:
            with autocast():
                for name, value in self.eval_sums(model, batch).items():
                    sums[name] = sums.get(name, 0) + value.double()
            count += len(batch[1])
        device = next(model.parameters()).device
        totals = distributed.all_reduce(torch.stack([*sums.values(), torch.tensor(count, dtype=torch.float64,
                                                                                 device=device)]))
        return {name: (value / totals[-1]).item() for name, value in zip(sums, totals)}

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-batch sums of each metric; `evaluate` divides by the number of samples."""
        raise NotImplementedError


def declares_task(task: type[Task]) -> Callable[[DataFunction], DataFunction]:
    """Decorate a data set's function with the class of its data's task, as `function.task`: its
    metrics (`Task.metrics`) are then known to `optbench check` without building the data."""

    def declare(function: DataFunction) -> DataFunction:
        function.task = task  # type: ignore[attr-defined]
        return function

    return declare


class Classification(Task):
    """Cross-entropy loss; validation loss and top-1 accuracy."""

    metrics = {"loss": "min", "acc": "max"}

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-batch sums of each metric; the trainer divides by the number of samples."""
        x, y = batch
        logits = model(x)
        return {
            "loss": F.cross_entropy(logits.float(), y, reduction="sum"),
            "acc": (logits.argmax(dim=1) == y).sum(),
        }


class LeastSquares(Task):
    """Regression with the loss 1/2 (f(x) - y)^2 (a model with one output): a quadratic in the
    weights of a linear model, whose Hessian is the inputs' covariance."""

    metrics = {"loss": "min"}

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return 0.5 * F.mse_loss(model(x).squeeze(-1), y)

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": 0.5 * (model(x).float().squeeze(-1) - y).square().sum()}


class TokenPrediction(Task):
    """A class per position (next character, masked token): labels (B, T), `IGNORE` where none.

    The training loss is the mean over labelled positions. Validation metrics are per sequence
    (the mean over its labelled positions), so that the trainer's per-sample average applies;
    `bits` is the loss in bits per token (bits per character for a character-level model).
    """

    metrics = {"loss": "min", "acc": "max", "bits": "min"}

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x).float()
        labelled = y != IGNORE
        per_token = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE, reduction="none")
        counts = labelled.sum(dim=1).clamp(min=1)
        loss = (per_token.sum(dim=1) / counts).sum()
        correct = ((logits.argmax(dim=-1) == y) & labelled).sum(dim=1) / counts
        return {"loss": loss, "acc": correct.sum(), "bits": loss / math.log(2)}
