"""Building the run's components from their config nodes (`_target_` plus arguments).

Every group works the same way: `_target_` names a callable of the group's kind, resolved under
optbench's `_target_` policy (`optbench.targets.resolve`), and the other keys are its keyword
arguments. Keys starting with `_` are optbench's own settings, not arguments, and so are the
optimizer's `LR_SCALING_KEYS`.
Context that a component needs from the run (the data's shape, the model's parameters, the number
of optimizer steps) is passed in by name when its signature names it.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from optbench.errors import ConfigError
from optbench.schema import TrainerConfig
from optbench.targets import resolve

if TYPE_CHECKING:
    import torch

    from optbench.data import InMemoryData
    from optbench.schedules import Schedule


# Optimizer keys that are optbench's own (batch-size-aware LR, `optbench.lr_scaling`), never
# constructor arguments. Here, not there, so that building needs nothing of the scaling.
LR_SCALING_KEYS = ("lr_scaling", "reference_batch")


def arguments(node: DictConfig) -> dict[str, Any]:
    """The keyword arguments of a component: its config minus `_target_` and `_private` keys."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return {k: v for k, v in values.items() if not str(k).startswith("_")}


def named(obj: Any) -> set[str]:
    """The argument names that a callable's signature names (not its *args or **kwargs)."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {p.name for p in inspect.signature(obj).parameters.values() if p.kind not in variadic}


def accepted(obj: Any) -> set[str] | None:
    """Names a callable accepts by keyword; None when it takes **kwargs."""
    params = inspect.signature(obj).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return named(obj)


def default_argument(target: str, name: str, key: str) -> Any:
    """The default value of argument `name` of what `target` names for the component at config key
    `key` (`optbench.targets.resolve`); None when it has none."""
    param = inspect.signature(resolve(target, key)).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def call_with_context(obj: Any, kwargs: dict[str, Any], context: dict[str, Any]) -> Any:
    """Call `obj(**kwargs)`, adding each context value that its signature names. A callable that
    only takes **kwargs gets none: `timm.create_model` hands them on to the model, which fails."""
    extra = {k: v for k, v in context.items() if k not in kwargs and k in named(obj)}
    return obj(**kwargs, **extra)


def build_data(node: DictConfig) -> InMemoryData:
    return call_with_context(resolve(node._target_, "data"), arguments(node), {})


# What each kind of input is, and models that read it, for the message of a mismatch.
INPUTS = {
    "images": ("images (C, H, W)", "model=resnet, tv_resnet, vit, tv_vit, timm, torchvision, mlp or dcgan"),
    "vectors": ("vectors", "model=mlp or gan_ring"),
    "tokens": ("token sequences", "model=rnn or bert"),
}


def build_model(node: DictConfig, data: InMemoryData) -> torch.nn.Module:
    """The model, given what it asks for about the data; a model declares the inputs it reads
    (`inputs`) so that a mismatch is a clear error, not a shape error deep in `forward`."""
    target = resolve(node._target_, "model")
    spec = data.spec
    reads = getattr(target, "inputs", None)
    if reads is not None and spec.inputs not in reads:
        given, models = INPUTS[spec.inputs]
        raise ConfigError(
            f"model._target_={node._target_}: reads {' or '.join(INPUTS[r][0] for r in reads)}, but the "
            f"data are {given} of shape {spec.input_shape}. Choose a model that reads "
            f"{given} ({models}) or other data."
        )
    context = {"input_shape": spec.input_shape, "num_classes": spec.num_classes, "vocab_size": spec.vocab_size,
               "per_token": spec.per_token}
    return call_with_context(target, arguments(node), context)


def build_param_groups(node: DictConfig, model: torch.nn.Module, lr: float | None) -> list[dict[str, Any]]:
    """The `params` preset's groups, each with `lr` = optimizer LR x the group's `lr_scale`."""
    groups = call_with_context(resolve(node._target_, "params"), arguments(node), {}).groups(model)
    for group in groups:
        del group["param_names"]
        if lr is not None:
            group["lr"] = lr * group["lr_scale"]
    return groups


def inner_components(node: DictConfig) -> dict[str, DictConfig]:
    """The keys of a component's config whose values are components themselves (Lookahead's `inner`)."""
    return {str(k): v for k, v in node.items() if isinstance(v, DictConfig) and "_target_" in v}


def nested_components(node: DictConfig, key: str) -> list[tuple[str, DictConfig]]:
    """(key, node) of every component nested in `node` at any depth (`optimizer.inner`, ...)."""
    return [found for name, inner in inner_components(node).items()
            for found in [(f"{key}.{name}", inner), *nested_components(inner, f"{key}.{name}")]]


def estimates_hessian(node: DictConfig) -> bool:
    """Whether the optimizer that `node` configures refreshes a Hessian estimate from the model's
    class logits (SophiaG's `update_hessian`)."""
    try:
        return hasattr(resolve(str(node._target_), "optimizer"), "update_hessian")
    except Exception:  # a bad _target_ is reported by the component check
        return False


def lr_holder(node: DictConfig) -> DictConfig:
    """The optimizer config that holds the LR: `node` itself, or the optimizer it wraps (Lookahead)."""
    if "lr" in node:
        return node
    inner = list(inner_components(node).values())
    return lr_holder(inner[0]) if inner else node


def base_lr(node: DictConfig) -> float | None:
    """The LR that an optimizer config sets, before `optimizer.lr_scaling` (the run's base LR is
    `optbench.lr_scaling.scaled_lr`): the optimizer's own `lr`, or that of the optimizer it wraps
    (Lookahead's `inner`), or else its class's default `lr`; None for an optimizer without one.
    Muon's `lr` is its base LR; `adamw_lr` is an LR of its own for the other parameters."""
    holder = lr_holder(node)
    if "lr" in holder:
        return holder.lr
    default = default_argument(holder._target_, "lr", "optimizer")
    return float(default) if isinstance(default, (int, float)) else None  # not torch's `required` marker


def build_optimizer(node: DictConfig, model: torch.nn.Module, params: DictConfig) -> torch.optim.Optimizer:
    return optimizer_from(node, build_param_groups(params, model, base_lr(node)))


def optimizer_from(node: DictConfig, params: Any) -> torch.optim.Optimizer:
    """The optimizer that `node` configures, over `params` (passed as `params` where it asks).

    A key whose value is itself a component (Lookahead's `inner`) is built first, over the same
    parameters, and passed as that argument: a wrapper gets the optimizer it wraps.
    """
    kwargs = {k: v for k, v in arguments(node).items() if k not in LR_SCALING_KEYS}  # optbench's, not the class's
    for key, inner in inner_components(node).items():
        kwargs[key] = optimizer_from(inner, params)
    return call_with_context(resolve(node._target_, "optimizer"), kwargs, {"params": params})


def is_schedule(node: DictConfig) -> bool:
    """Whether the scheduler config names one of optbench's schedules (an LR multiplier)."""
    from optbench.schedules import Schedule

    target = resolve(node._target_, "scheduler")
    return inspect.isclass(target) and issubclass(target, Schedule)


def build_schedule(
    node: DictConfig, total_steps: int, steps_per_epoch: int | None, base_lr: float | None
) -> Schedule:
    """optbench's LR multiplier (no torch needed); `base_lr` turns floors given as LRs into ratios."""
    context = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "base_lr": base_lr}
    context = {k: v for k, v in context.items() if v is not None}  # unknown: leave the default
    return call_with_context(resolve(node._target_, "scheduler"), arguments(node), context)


def build_scheduler(
    node: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int | None,
    base_lr: float | None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler stepped once per optimizer step.

    optbench's schedules are LR multipliers (`optbench.schedules.Schedule`), wrapped in one
    `ScheduledLR` (a LambdaLR) so that every parameter group keeps its own base LR. Any torch
    scheduler class works too and gets the optimizer (and `total_steps` where it asks for it).
    `base_lr` is the run's base LR (`optbench.lr_scaling.scaled_lr`), of which floors given as LRs
    are fractions (None: the optimizer has no LR).
    """
    if is_schedule(node):
        from optbench.lr_scheduler import ScheduledLR

        schedule = build_schedule(node, total_steps, steps_per_epoch, base_lr)
        return ScheduledLR(optimizer, schedule)
    context = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
    context = {k: v for k, v in context.items() if v is not None}
    return call_with_context(resolve(node._target_, "scheduler"), {"optimizer": optimizer, **arguments(node)},
                             context)


def stand_in_scheduler(
    optimizer: DictConfig, scheduler: DictConfig, total_steps: int, steps_per_epoch: int | None
) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler `scheduler` on the optimizer `optimizer` (a config scaled for the run's batch:
    `optbench.lr_scaling.scaled_optimizer`) over a stand-in parameter (no model)."""
    import torch

    stand_in = [{"name": "all", "params": list(torch.nn.Linear(1, 1).parameters())}]
    return build_scheduler(scheduler, optimizer_from(optimizer, stand_in), total_steps, steps_per_epoch,
                           base_lr(optimizer))


def run_length(tc: TrainerConfig, data: InMemoryData | None) -> tuple[int, int | None]:
    """(optimizer steps in the run, optimizer steps per epoch): the one clock schedules count in.

    Without the data (`None`: not built) the steps per epoch are unknown and `max_steps` is the length.
    """
    if data is None:
        assert tc.max_steps is not None, "a run without max_steps needs its data to know its length"
        return tc.max_steps, None
    steps_per_epoch = math.ceil(data.batches_per_epoch / tc.accumulation_steps)
    return tc.max_steps or tc.epochs * steps_per_epoch, steps_per_epoch


def planned_length(cfg: DictConfig) -> tuple[int, int | None]:
    """`run_length` of a config before the run, building the data only when the length depends
    on them: no `trainer.max_steps`, or a schedule duration in epochs."""
    from optbench.schedules import mentions_epochs

    tc = TrainerConfig.from_mapping(OmegaConf.to_container(cfg.trainer, resolve=True))
    needs_data = tc.max_steps is None or mentions_epochs(arguments(cfg.scheduler))
    return run_length(tc, build_data(cfg.data) if needs_data else None)
