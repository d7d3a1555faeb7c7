"""Checking a composed config before any compute is spent.

Every component's arguments are bound against its constructor's signature; optbench's own
constructors carry typed annotations (`optbench.schema`) that give ranges and choices. All
problems are collected and reported at once, each naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optbench import distributed, lr_scaling
from optbench.build import accepted, arguments, locate
from optbench.errors import ConfigError
from optbench.schema import TrainerConfig, check_value

# Components and the arguments that optbench passes itself (never from the config).
COMPONENTS = {
    "data": set(),
    "params": set(),
    "model": {"input_shape", "num_classes", "vocab_size", "per_token"},
    "optimizer": {"params"},
    "scheduler": {"optimizer", "total_steps", "steps_per_epoch", "base_lr"},
}

# Optional packages that configs name, and how to get them.
INSTALL_HINTS = {
    "bitsandbytes": " 8-bit optimizers need it: pip install 'bitsandbytes>=0.50' (CPU from 0.50, or CUDA).",
}

# Ranges that hold for these optimizer arguments whatever class takes them (torch's own
# optimizers have no annotations to read them from).
OPTIMIZER_RULES: dict[str, tuple[str, typing.Callable[[Any], bool]]] = {
    "lr": (">= 0", lambda v: v >= 0),
    # A pair for Adafactor (torch's: null or a number, then a number).
    "eps": (">= 0 (or a list of such numbers or null)",
            lambda v: all(e is None or e >= 0 for e in (v if isinstance(v, (list, tuple)) else [v]))),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "betas": ("a pair of numbers in [0, 1)", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)),
}


def validate_config(cfg: DictConfig, preview: bool = False) -> list[str]:
    """Raise ConfigError listing every problem of `cfg`; return its warnings when it is runnable.

    Warnings name what is runnable but cannot be what was meant (a cosine that ends before the
    run). `preview` (for `optbench schedules`) checks only what a schedule preview uses (trainer
    and scheduler), and demotes a warmup longer than the run to a warning so that it is shown.
    """
    problems = check_trainer(cfg.trainer)
    for group in ("scheduler",) if preview else COMPONENTS:
        problems += check_component(group, cfg[group], COMPONENTS[group])
    if not preview:
        problems += lr_scaling.problems(cfg.optimizer) + distributed.problems(cfg)
    if not preview:
        for key, node in wrapped_optimizers(cfg.optimizer):
            problems += check_component(key, node, COMPONENTS["optimizer"])
    if not preview and cfg.get("gan") is not None:  # a GAN's own optimizers and schedulers
        for net in ("g", "d"):
            problems += check_component(f"gan.{net}", cfg.gan[net], COMPONENTS["optimizer"])
            problems += check_component(f"gan.{net}_scheduler", cfg.gan[f"{net}_scheduler"], COMPONENTS["scheduler"])
    if not problems and not preview:
        problems += dry_run_optimizer(cfg.optimizer)
    warnings: list[str] = []
    if not problems:
        schedule_problems, warnings = check_schedule(cfg, preview)
        problems += schedule_problems
    if problems:
        raise ConfigError(problems)
    return warnings


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _closest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_trainer(node: DictConfig) -> list[str]:
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return check_settings("trainer", TrainerConfig, values)


def check_settings(key: str, schema: type, values: dict[str, Any]) -> list[str]:
    """Problems of `values` against a settings dataclass (nested dataclasses included)."""
    types = typing.get_type_hints(schema, include_extras=True)
    problems = []
    for name, value in values.items():
        if name not in types:
            problems.append(f"{key}.{name}: not a setting of {key}.{_closest(name, types)} "
                            f"Allowed: {', '.join(types)}.")
        elif dataclasses.is_dataclass(types[name]):
            if isinstance(value, dict):
                problems += check_settings(f"{key}.{name}", types[name], value)
            else:
                problems.append(f"{key}.{name}={_fmt(value)}: must be a group of settings "
                                f"({', '.join(typing.get_type_hints(types[name]))}).")
        else:
            allowed = check_value(types[name], value)
            if allowed is not None:
                problems.append(f"{key}.{name}={_fmt(value)}: must be {allowed}.")
    return problems


def check_component(group: str, node: DictConfig, supplied: set[str]) -> list[str]:
    """Problems binding a component's config to the signature of its `_target_`."""
    target = node.get("_target_")
    if not target:
        return [f"{group}._target_ is missing: choose an option ({group}=NAME) or give a class."]
    try:
        obj = locate(target)
    except Exception as e:  # ImportError, AttributeError, ...: all mean the path is wrong.
        reason = " ".join(str(e).split())
        hint = INSTALL_HINTS.get(target.split(".")[0], "")
        return [f"{group}._target_={target}: cannot be imported ({reason}).{hint}"]
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    names = accepted(obj)
    kwargs = arguments(node)
    hints = _hints(obj)
    problems = []
    for key, value in kwargs.items():
        if isinstance(value, dict) and "_target_" in value:
            continue  # a wrapped optimizer: checked on its own (wrapped_optimizers)
        if group == "optimizer" and key in lr_scaling.SETTINGS:
            continue  # optbench's own settings, checked by lr_scaling.problems
        if names is not None and key not in names:
            allowed = sorted(names - supplied - {"self"})
            problems.append(
                f"{group}.{key}: not an argument of {target}.{_closest(key, allowed)} "
                f"Allowed: {', '.join(allowed)} (remove a key with ~{group}.{key})."
            )
            continue
        expected = check_value(hints.get(key, Any), value)
        if expected is not None:
            problems.append(f"{group}.{key}={_fmt(value)}: must be {expected}.")
        elif group.startswith("optimizer") and key in OPTIMIZER_RULES and value is not None:
            rule, ok = OPTIMIZER_RULES[key]
            if not _safe(ok, value):
                problems.append(f"{group}.{key}={_fmt(value)}: must be {rule}.")
    for name, param in signature.parameters.items():
        required = param.default is inspect.Parameter.empty and param.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and name not in kwargs and name not in supplied:
            problems.append(f"{group}.{name} is required by {target} and not set.")
    return problems


def _safe(check: typing.Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except TypeError:
        return False


def _hints(obj: Any) -> dict[str, Any]:
    func = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable annotations in a foreign class: fall back to none.
        return {}


def wrapped_optimizers(node: DictConfig, key: str = "optimizer") -> list[tuple[str, DictConfig]]:
    """(key, node) of each optimizer nested in an optimizer's config (Lookahead's `inner`)."""
    found = []
    for name, value in node.items():
        if isinstance(value, DictConfig) and "_target_" in value:
            found += [(f"{key}.{name}", value), *wrapped_optimizers(value, f"{key}.{name}")]
    return found


def dry_run_optimizer(node: DictConfig) -> list[str]:
    """Construct the optimizer on one dummy parameter: its own argument checks speak too."""
    import torch

    from optbench.build import optimizer_from

    try:
        optimizer_from(node, [torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError) as e:
        return [f"optimizer ({node._target_}): {e}"]
    return []


def check_schedule(cfg: DictConfig, preview: bool) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the scheduler over the run's length.

    A run's check builds the scheduler on its optimizer over a stand-in parameter; a preview of
    one of optbench's schedules builds the schedule alone, which needs no torch.
    """
    from optbench.build import build_schedule, is_schedule, planned_length, stand_in_scheduler
    from optbench.schedules import Plateau

    try:
        run_steps, steps_per_epoch = planned_length(cfg)
        if preview and is_schedule(cfg.scheduler):
            schedule = build_schedule(cfg.scheduler, run_steps, steps_per_epoch, cfg.optimizer.get("lr"))
        else:
            import torch

            scheduler = stand_in_scheduler(cfg, run_steps, steps_per_epoch)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                return [f"scheduler._target_={cfg.scheduler._target_}: steps on a metric, not once per "
                        f"optimizer step; use scheduler=plateau (scheduler.metric names the metric)."], []
            schedule = getattr(scheduler, "schedule", None)
    except ConfigError as e:
        return e.problems, []
    except (ValueError, TypeError) as e:  # a torch scheduler's own argument checks
        return [f"scheduler ({cfg.scheduler._target_}): {e}"], []
    if schedule is None:  # a torch scheduler: nothing more to know about it
        return [], []
    problems, warnings = [], schedule.warnings(run_steps)
    if isinstance(schedule, Plateau) and schedule.metric not in validation_metrics():
        problems.append(f"scheduler.metric={schedule.metric!r}: never logged; the evaluation logs "
                        f"{', '.join(validation_metrics())}.")
    warmup = schedule.warmup_problem(run_steps)
    if warmup is not None:
        (warnings if preview else problems).append(warmup)
    return problems, warnings


def validation_metrics() -> list[str]:
    """The metrics that each evaluation logs (imported late: the task module needs torch)."""
    from optbench.tasks import Classification

    return list(Classification.metrics)
