"""Typed settings and value checks shared by the validator and the components.

Constructor arguments of optbench's own components are annotated with these types
(`PositiveInt`, `Probability`, ...), so that `optbench.validate` can check a config against
the signature before any compute is spent, and name the key, the value and what is allowed.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval that a number must lie in."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(low=1)]
NonNegativeInt = Annotated[int, Range(low=0)]
PositiveFloat = Annotated[float, Range(low=0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(low=0)]
Fraction = Annotated[float, Range(low=0, high=1, high_open=True)]  # [0, 1)
UnitInterval = Annotated[float, Range(low=0, high=1, low_open=True, high_open=True)]  # (0, 1)


def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        ranges = [m.describe() for m in meta if isinstance(m, Range)]
        return f"{_describe_type(base)} {' '.join(ranges)}".strip()
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe_type(a) for a in args)
        return f"{text} or null" if len(args) < len(typing.get_args(tp)) else text
    if origin in SEQUENCES or tp in (tuple, list):
        inner = typing.get_args(tp)
        return f"a list, each item {_describe_type(inner[0])}" if inner else "a list"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# What `Sequence[int]` (collections.abc's or typing's) and `list[int]` annotations have as their origin.
SEQUENCES = (tuple, list, collections.abc.Sequence)


def non_finite(value: Any) -> bool:
    """Whether `value` is, or holds, a NaN or an infinity (`1e400` reads as one)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(map(non_finite, value))
    if isinstance(value, dict):
        return any(map(non_finite, value.values()))
    return False


def check_value(tp: Any, value: Any) -> str | None:
    """None if `value` fits the annotation `tp`, else what is allowed (for the message).

    Annotations it does not understand are accepted, but never a NaN or an infinity, which no
    setting means unless its annotation says so (`Literal["inf"]`): the constructor has the last word.
    """
    if tp is Any or tp is inspect.Parameter.empty:
        return "finite (no nan or inf)" if non_finite(value) else None
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        if check_value(base, value) is not None:
            return _describe_type(tp)
        in_range = all(m.contains(value) for m in meta if isinstance(m, Range))
        return None if in_range else _describe_type(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # YAML reads `precision: 32` as an int; the choices are compared as text.
        return None if str(value) in {str(a) for a in allowed} else _describe_type(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if any(check_value(a, value) is None for a in args):
            return None
        return _describe_type(tp)
    if tp is type(None):
        return None if value is None else "null"
    if tp is bool:
        return None if isinstance(value, bool) else _describe_type(tp)
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else _describe_type(tp)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else _describe_type(tp)
    if tp is str:
        return None if isinstance(value, str) else _describe_type(tp)
    if origin in SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return _describe_type(tp)
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(inner) == 1 and any(check_value(inner[0], v) for v in value):
            return _describe_type(tp)
        return None
    return None



@dataclass
class EmaConfig:
    """`trainer.ema`: an exponential moving average of the weights, evaluated beside them."""

    decay: Optional[UnitInterval] = None
    """Weight of the old average per step, e.g. 0.999; null is off."""


@dataclass
class EarlyStoppingConfig:
    """`trainer.early_stopping`: end the run when `trainer.monitor` stops improving."""

    patience: Optional[PositiveInt] = None
    """Evaluations in a row without improvement that end the run (status completed); null is off."""
    min_delta: NonNegativeFloat = 0.0
    """How much better than its best (in `trainer.monitor_mode`'s direction) counts as improving."""


@dataclass
class TrainerConfig:
    """The `trainer` config group: how a run is driven. Each field is `trainer.<name>`."""

    epochs: PositiveInt = 10
    """Passes over the training set; `max_steps` wins when set."""
    max_steps: Optional[PositiveInt] = None
    """Optimizer steps (after accumulation) to train for."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` is CUDA when present, else the CPU."""
    precision: Literal["32", "bf16", "16"] = "32"
    """`bf16` autocasts; `16` autocasts and scales the loss (CUDA)."""
    accumulation_steps: PositiveInt = 1
    """Micro-batches per optimizer step."""
    devices: PositiveInt = 1
    """Processes to train with on this machine: above 1, optbench checks the config once and then
    starts them with torchrun (one per GPU, or CPU processes), as `torchrun --nproc_per_node=N` would."""
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    """How processes started by torchrun share the work: `ddp` (a copy of the model on each),
    `fsdp` (FSDP2: parameters sharded); `auto` is ddp under torchrun, else `none` (one process)."""
    clip_norm: Optional[PositiveFloat] = None
    """Clip the total gradient 2-norm to this value; null is off."""
    clip_norm_type: Union[PositiveFloat, Literal["inf"]] = 2.0
    """The p of the p-norm that `clip_norm` limits (inf for the largest element)."""
    clip_value: Optional[PositiveFloat] = None
    """Clip every gradient element to [-v, v]; null is off."""
    clip_agc: Optional[PositiveFloat] = None
    """Adaptive gradient clipping: each unit's gradient to at most this times its weight norm."""
    ema: EmaConfig = dataclasses.field(default_factory=EmaConfig)
    """Exponential moving average of the weights (`trainer.ema.decay`)."""
    compile: bool = False
    """torch.compile the model."""
    channels_last: bool = False
    """Channels-last memory format for convolutional models and their inputs."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """On a non-finite loss or gradient: end the run as `diverged`, or skip that update."""
    diagnostics_every: Optional[PositiveInt] = 100
    """Optimizer diagnostics (diagnostics.jsonl, TensorBoard diag/) every this many steps; null is off."""
    seed: NonNegativeInt = 0
    """Seeds Python, NumPy and torch (and the data order)."""
    deterministic: bool = False
    """Deterministic kernels (slower on CUDA)."""
    eval_every: Optional[PositiveInt] = None
    """Evaluate every this many optimizer steps; null is once an epoch. Always at the end."""
    checkpoint_every: Optional[PositiveInt] = None
    """Write checkpoints/last.pt every this many steps; null is at evaluations. Always at the end."""
    log_every: PositiveInt = 10
    """Write a train line to metrics.jsonl and TensorBoard every this many steps."""
    resume: Optional[str] = None
    """null (start afresh), `auto` (this run folder's last checkpoint, if any) or a checkpoint path."""
    monitor: str = "acc"
    """Validation metric that decides checkpoints/best.pt."""
    monitor_mode: Literal["max", "min"] = "max"
    """Whether a larger or a smaller `monitor` is better."""
    progress: bool = True
    """Show the progress bar."""
    tensorboard: bool = True
    """Write TensorBoard event files under tb/."""
    mlflow: bool = False
    """Log params, metrics and status to MLflow as well (pip install 'optbench[mlflow]')."""
    mlflow_tracking_uri: Optional[str] = None
    """Where MLflow stores runs; null is a file store in the run folder's mlruns/."""
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    """End the run when the monitored metric stops improving (`trainer.early_stopping.patience`)."""

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls, include_extras=True)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "TrainerConfig":
        cfg = cls(**{**values, "ema": EmaConfig(**values.get("ema", {})),
                     "early_stopping": EarlyStoppingConfig(**values.get("early_stopping", {}))})
        cfg.precision = str(cfg.precision)  # type: ignore[assignment]
        return cfg


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


__all__ = [
    "Range",
    "PositiveInt",
    "NonNegativeInt",
    "PositiveFloat",
    "NonNegativeFloat",
    "Fraction",
    "UnitInterval",
    "TrainerConfig",
    "EmaConfig",
    "check_value",
    "field_names",
]
