"""Building the run's components from their config nodes (`_target_` plus arguments).

Every group works the same way: `_target_` names any importable callable and the other keys are
its keyword arguments. Keys starting with `_` are optbench's own settings, not arguments.
Context that a component needs from the run (the data's shape, the model's parameters, the number
of optimizer steps) is passed in by name when its signature asks for it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import torch

    from optbench.data import InMemoryData


def locate(target: str) -> Any:
    """The object that a dotted `_target_` path names (`package.module.Class`).

    Raises ImportError naming the part of the path that does not exist.
    """
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as e:
            # A module that exists but fails to import one of its own dependencies must say so.
            if e.name is None or not module_name.startswith(e.name):
                raise
    else:
        raise ImportError(f"no module named {parts[0]!r}")
    for depth, attr in enumerate(parts[i:], start=i):
        if not hasattr(obj, attr):
            raise ImportError(f"{'.'.join(parts[:depth])} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    return obj


def arguments(node: DictConfig) -> dict[str, Any]:
    """The keyword arguments of a component: its config minus `_target_` and `_private` keys."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return {k: v for k, v in values.items() if not str(k).startswith("_")}


def accepted(obj: Any) -> set[str] | None:
    """Names a callable accepts by keyword; None when it takes **kwargs."""
    params = inspect.signature(obj).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def call_with_context(obj: Any, kwargs: dict[str, Any], context: dict[str, Any]) -> Any:
    """Call `obj(**kwargs)`, adding each context value that its signature asks for by name."""
    names = accepted(obj)
    extra = {k: v for k, v in context.items() if k not in kwargs and (names is None or k in names)}
    return obj(**kwargs, **extra)


def build_data(node: DictConfig) -> InMemoryData:
    return call_with_context(locate(node._target_), arguments(node), {})


def build_model(node: DictConfig, data: InMemoryData) -> torch.nn.Module:
    context = {"input_shape": data.spec.input_shape, "num_classes": data.spec.num_classes}
    return call_with_context(locate(node._target_), arguments(node), context)


def param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The model's trainable parameters as named parameter groups (one group for now)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"name": "all", "params": params}]


def build_optimizer(node: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return optimizer_from(node, param_groups(model))


def optimizer_from(node: DictConfig, params: Any) -> torch.optim.Optimizer:
    """The optimizer that `node` configures, over `params` (passed as `params` where it asks).

    A key whose value is itself a component (Lookahead's `inner`) is built first, over the same
    parameters, and passed as that argument: a wrapper gets the optimizer it wraps.
    """
    kwargs = arguments(node)
    for key, value in node.items():
        if isinstance(value, DictConfig) and "_target_" in value:
            kwargs[str(key)] = optimizer_from(value, params)
    return call_with_context(locate(node._target_), kwargs, {"params": params})


def build_scheduler(
    node: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per optimizer step.

    optbench's schedules are LR multipliers (`optbench.schedules.Schedule`), wrapped in one
    `LambdaLR` so that every parameter group keeps its own base LR; any torch scheduler class
    works too and gets the optimizer (and `total_steps` where it asks for it).
    """
    import torch

    from optbench.schedules import Schedule

    target = locate(node._target_)
    kwargs = arguments(node)
    context = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
    if inspect.isclass(target) and issubclass(target, Schedule):
        schedule = call_with_context(target, kwargs, context)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return call_with_context(target, {"optimizer": optimizer, **kwargs}, context)
