"""Checking a composed config before any compute is spent.

Every component's arguments are bound against its constructor's signature; optbench's own
constructors carry typed annotations (`optbench.schema`) that give ranges and choices. All
problems are collected and reported at once, each naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import typing
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from optbench import distributed, lr_scaling, mlflow_log, targets
from optbench.build import LR_SCALING_KEYS, accepted, arguments, estimates_hessian, inner_components, nested_components
from optbench.errors import ConfigError
from optbench.evaluation import early_stopping_problems
from optbench.schema import TrainerConfig, check_value

if TYPE_CHECKING:
    from optbench.tasks import Task

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


def _number(value: Any) -> bool:
    """A finite int or float: YAML's `true` is an int to Python, and `inf` a float to torch."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Ranges that hold for these optimizer arguments whatever class takes them (torch's own
# optimizers have no annotations to read them from).
OPTIMIZER_RULES: dict[str, tuple[str, typing.Callable[[Any], bool]]] = {
    "lr": ("a finite number >= 0", lambda v: _number(v) and v >= 0),
    # A pair for Adafactor (torch's: null or a number, then a number).
    "eps": ("a finite number >= 0 (or a list of such numbers or null)",
            lambda v: all(e is None or (_number(e) and e >= 0) for e in (v if isinstance(v, (list, tuple)) else [v]))),
    "weight_decay": ("a finite number >= 0", lambda v: _number(v) and v >= 0),
    "momentum": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "betas": ("a pair of numbers in [0, 1)", lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)),
}


def validate_config(cfg: DictConfig, preview: bool = False) -> list[str]:
    """Raise ConfigError listing every problem of `cfg`; return its warnings when it is runnable.

    Warnings name what is runnable but cannot be what was meant (a cosine that ends before the
    run). `preview` (for `optbench schedules`) checks only what a schedule preview uses (trainer,
    scheduler, data, the LR scaling), and demotes a warmup longer than the run to a warning so
    that it is shown.
    """
    check_targets(cfg)  # first: nothing that the policy refuses is imported or called by what follows
    problems = check_trainer(cfg.trainer)
    for group in ("scheduler", "data") if preview else COMPONENTS:
        problems += (check_optimizer(cfg.optimizer) if group == "optimizer" else
                     check_component(group, cfg[group], COMPONENTS[group]))
    problems += lr_scaling.problems(cfg.optimizer)  # the preview scales the LR too
    if not preview:
        problems += distributed.problems(cfg)
    if not preview and cfg.get("gan") is not None:
        problems += check_gan(cfg)
    if not preview:
        problems += check_memory_format(cfg) + check_launcher(cfg)
        problems += check_device(cfg.trainer) + check_resume(cfg)
        problems += mlflow_log.problems(cfg.trainer)
    if not problems and not preview:
        problems += dry_run_optimizer(cfg.optimizer)
    warnings: list[str] = []
    if not problems:
        task = workload_task(cfg.data)
        if not preview and task.for_gans != (cfg.get("gan") is not None):
            problems.append(
                f"data._target_={cfg.data._target_} with model._target_={cfg.model._target_}: "
                + ("these data are samples for a GAN to imitate; choose model=gan_ring (data=ring) or "
                   "model=dcgan (data=digit_images)." if task.for_gans else
                   "a GAN trains on samples to imitate; choose data=ring (model=gan_ring) or data=digit_images "
                   "(model=dcgan)."))
            raise ConfigError(problems)
        logged = logged_metrics(task, cfg.trainer)
        schedule_problems, warnings = check_schedule(cfg, preview, logged)
        problems += schedule_problems
        if not preview:
            problems += check_target(cfg.data, task)
            monitor_problems, monitor_warnings = check_monitor(cfg.trainer.monitor, logged)
            problems, warnings = problems + monitor_problems, warnings + monitor_warnings
            problems += [] if monitor_problems else early_stopping_problems(cfg, logged)
    if not problems and not preview:
        problems += dry_build(cfg)
    if problems:
        raise ConfigError(problems)
    return warnings


def check_device(trainer: DictConfig) -> list[str]:
    """`trainer.device` as the trainer resolves it: `cuda` on a machine without one is refused
    (another value that is no device is the trainer schema's to report)."""
    if str(trainer.get("device")) != "cuda":
        return []
    try:
        distributed.resolve_device(str(trainer.device))
    except ConfigError as e:
        return e.problems
    return []


def check_resume(cfg: DictConfig) -> list[str]:
    """The checkpoint that `trainer.resume` names, read as the resume will read it (exists, loads
    with weights_only, has a checkpoint's keys, holds this run's optimizers); `auto` names the run
    folder's own, which `config.validate_overrides` checks once it knows the folder."""
    from pathlib import Path

    from optbench import checkpoint

    resume = cfg.trainer.get("resume")
    if resume in (None, "auto"):
        return []
    try:
        state = checkpoint.load(Path(str(resume)).expanduser())
        checkpoint.refuse_other_optimizer(resume, state.get("config", {}), cfg)
    except ConfigError as e:
        return e.problems
    return []


def dry_build(cfg: DictConfig) -> list[str]:
    """Build the run's data, and its model on the meta device (shapes without memory or compute),
    as the trainer will: what only they can tell (a missing data.root, a model that cannot read the
    data, a batch larger than the training set) is then refused before a run folder exists."""
    from optbench.build import build_data

    try:
        data = build_data(cfg.data)
    except ConfigError as e:
        return e.problems
    except (TypeError, ValueError) as e:  # the data function's own argument checks
        return [f"data._target_={cfg.data._target_}: {' '.join(str(e).split())[:300]}"]
    try:
        model = _model_for(cfg.model, data)
    except ConfigError as e:
        return e.problems
    except Exception as e:  # whatever a constructor raises on arguments it cannot use
        return [f"model._target_={cfg.model._target_}: cannot be built for these data "
                f"({type(e).__name__}: {' '.join(str(e).split())[:300]})."]
    problems = []
    if data.batch_size > data.num_train:
        problems.append(f"data.batch_size={data.batch_size}: larger than the training set ({data.num_train:,} "
                        f"samples); choose at most {data.num_train} (a batch holds distinct samples).")
    if cfg.trainer.get("channels_last") and not any(p.ndim == 4 for p in model.parameters()):
        problems.append(f"trainer.channels_last=true: model._target_={cfg.model._target_} has no "
                        f"convolutions (4-D weights) to lay out channels-last; set it to false.")
    return problems + one_sample_batch_norm(cfg, data, model)


def one_sample_batch_norm(cfg: DictConfig, data: Any, model: Any) -> list[str]:
    """Batch norm over features (BatchNorm1d, the default MLP's) cannot train on one sample; torch
    raises at the first micro-batch of one, which an epoch's short last batch can be, mid-run."""
    import torch

    if data.batch_size > data.num_train or not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()):
        return []
    ranks = max(distributed.devices_to_start(cfg), distributed.world().size)
    rest = data.num_train % data.batch_size
    kept = rest >= ranks and not getattr(data, "drop_last", False)  # as count_batches and shard keep it
    if min(data.batch_size, rest if kept else data.batch_size) // ranks != 1:
        return []
    where = (f"the last batch of each epoch holds {rest} of the {data.num_train:,} training samples"
             if data.batch_size // ranks > 1 else f"every batch holds {data.batch_size} sample(s)")
    alternative = "model.batch_norm=false" if "batch_norm" in cfg.model else "a model without BatchNorm1d"
    return [f"data.batch_size={data.batch_size}: {where}{f', 1 per process ({ranks} processes)' if ranks > 1 else ''}, "
            f"and model._target_={cfg.model._target_} has batch norm, which cannot train on one sample; choose a "
            f"batch size that leaves at least 2 samples per process in every batch, or {alternative} (model=mlp "
            f"has none)."]


def _model_for(node: DictConfig, data: Any) -> Any:
    """The model that `node` builds for `data`: on the meta device, else (a constructor that
    computes with its tensors, which meta tensors cannot) on the CPU."""
    import torch

    from optbench.build import build_model

    try:
        with torch.device("meta"):
            return build_model(node, data)
    except (RuntimeError, NotImplementedError):
        return build_model(node, data)


def check_gan(cfg: DictConfig) -> list[str]:
    """A GAN's own optimizers and schedulers, and the settings a GAN workload does not use.

    A GAN trains its networks with `gan.g` and `gan.d` (and their schedulers), so a choice of the
    `optimizer` or `scheduler` group on the command line would be ignored: it is refused instead.
    """
    model = f"model._target_={cfg.model._target_}"
    problems = []
    for net in ("g", "d"):
        problems += check_component(f"gan.{net}", cfg.gan[net], COMPONENTS["optimizer"])
        problems += check_component(f"gan.{net}_scheduler", cfg.gan[f"{net}_scheduler"], COMPONENTS["scheduler"])
        problems += lr_scaling.problems(cfg.gan[net])
        nodes = [(f"gan.{net}", cfg.gan[net]), *nested_components(cfg.gan[net], f"gan.{net}")]
        problems += [f"{key}._target_={node._target_}: it estimates a Hessian from class logits, which "
                     f"a GAN ({model}) does not have; choose another optimizer with optimizer@gan.{net}=NAME."
                     for key, node in nodes if estimates_hessian(node)]
    overrides = cfg.get("hydra", {}).get("overrides", {}).get("task", []) or []
    for override in map(str, overrides):
        key = override.lstrip("+~").split("=", 1)[0]
        group = key.rpartition("@")[2].split(".", 1)[0]  # where it lands: optimizer@gan.g lands in gan
        if group in ("optimizer", "scheduler"):
            problems.append(f"{override}: a GAN ({model}) trains with gan.g and gan.d and their schedulers "
                            f"gan.g_scheduler and gan.d_scheduler; the {group} group is not used. Choose with "
                            f"{group}@gan.g{'_scheduler' if group == 'scheduler' else ''}=NAME, set fields "
                            f"with gan.g{'_scheduler' if group == 'scheduler' else ''}.FIELD=VALUE.")
    return problems


def check_optimizer(node: DictConfig) -> list[str]:
    """The optimizer's arguments, and those of each optimizer it wraps (Lookahead's inner one)."""
    problems = check_component("optimizer", node, COMPONENTS["optimizer"])
    for key, inner in nested_components(node, "optimizer"):
        problems += check_component(key, inner, COMPONENTS["optimizer"])
    return problems


def check_launcher(cfg: DictConfig) -> list[str]:
    """A SLURM launcher needs SLURM's commands on this machine (submitit calls sbatch and srun)."""
    import shutil

    launcher = str(cfg.get("hydra", {}).get("launcher", {}).get("_target_", ""))
    if launcher.endswith(".SlurmLauncher") and shutil.which("sbatch") is None:
        return ["hydra/launcher=slurm: SLURM's sbatch is not found on this machine; run the sweep on a "
                "SLURM login node, or try the same jobs here with hydra/launcher=slurm_local."]
    return []


def check_memory_format(cfg: DictConfig) -> list[str]:
    """Channels-last is a layout of image convolutions: refused for a model that reads no images."""
    try:
        reads = getattr(targets.resolve(str(cfg.model._target_), "model"), "inputs", None)
    except Exception:  # an import problem is reported by the component check
        return []
    if cfg.trainer.get("channels_last") and reads is not None and "images" not in reads:
        return [f"trainer.channels_last=true: model._target_={cfg.model._target_} reads {' or '.join(reads)}, "
                f"not images; channels-last is a memory format for image convolutions (set it to false)."]
    return []


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
        obj = targets.resolve(target, group)
    except ConfigError as e:  # refused by the _target_ policy
        return e.problems
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
    nested = inner_components(node)
    for key, value in kwargs.items():
        if key in nested:
            continue  # a wrapped optimizer: checked on its own (nested_components)
        if group == "optimizer" and key in LR_SCALING_KEYS:
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


def dry_run_optimizer(node: DictConfig) -> list[str]:
    """Construct the optimizer on one dummy parameter: its own argument checks speak too."""
    import torch

    from optbench.build import optimizer_from

    try:
        optimizer_from(node, [torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError) as e:
        return [f"optimizer ({node._target_}): {e}"]
    return []


def check_schedule(cfg: DictConfig, preview: bool, logged: list[str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the scheduler over the run's length, at the run's base LR; `logged`:
    the validation metrics that the run logs (`logged_metrics`), which a plateau can follow.

    A run's check builds the scheduler on its optimizer over a stand-in parameter; a preview of
    one of optbench's schedules builds the schedule alone, which needs no torch.
    """
    from optbench.build import build_schedule, is_schedule, planned_length, stand_in_scheduler
    from optbench.schedules import Plateau

    try:
        run_steps, steps_per_epoch = planned_length(cfg)
        optimizer, base_lr = lr_scaling.scaled_optimizer(cfg.optimizer, lr_scaling.planned_batch(cfg))
        if preview and is_schedule(cfg.scheduler):
            schedule = build_schedule(cfg.scheduler, run_steps, steps_per_epoch, base_lr.value)
        else:
            import torch

            scheduler = stand_in_scheduler(optimizer, cfg.scheduler, run_steps, steps_per_epoch)
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
    if isinstance(schedule, Plateau) and schedule.metric not in logged:
        problems.append(f"scheduler.metric={schedule.metric!r}: never logged; this workload's evaluation "
                        f"logs {', '.join(logged)}.")
    warmup = schedule.warmup_problem(run_steps)
    if warmup is not None:
        (warnings if preview else problems).append(warmup)
    return problems, warnings


def workload_task(data: DictConfig) -> type[Task] | Task:
    """The task of the configured data: the class that their function declares
    (`optbench.tasks.declares_task`), so that no data are built; else, for a data set of one's own
    that declares none, the task of the data built. Imported late: the task module needs torch."""
    from optbench.build import build_data
    from optbench.tasks import Classification

    declared = getattr(targets.resolve(data._target_, "data"), "task", None)
    if declared is not None:
        return declared
    return getattr(build_data(data), "task", None) or Classification  # what the trainer assumes


def logged_metrics(task: type[Task] | Task, trainer: DictConfig) -> list[str]:
    """The validation metrics that a run logs: its task's, and each again as `ema_<metric>` when
    `trainer.ema.decay` is set (the EMA of the weights is evaluated beside them)."""
    metrics = list(task.metrics)
    if OmegaConf.select(trainer, "ema.decay") is not None:
        metrics += [f"ema_{name}" for name in metrics]
    return metrics


def check_target(data: DictConfig, task: type[Task] | Task) -> list[str]:
    """Problems of `data.target` against the task's metrics, as building the data would find them."""
    from optbench.tasks import Target

    try:
        Target.parse(data.get("target"), task.metrics)
    except ConfigError as e:
        return e.problems
    return []


def check_monitor(monitor: str, logged: list[str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of `trainer.monitor` never logged: checkpoints/best.pt is then never
    written and a sweep ranks every job NaN. A chosen monitor is refused; the default (`acc`), which
    every workload runs with unless it says otherwise, is a warning."""
    if monitor in logged:
        return [], []
    text = (f"trainer.monitor={monitor!r}: never logged (this workload's evaluation logs {', '.join(logged)}), "
            f"so checkpoints/best.pt is never written and a sweep ranks every job NaN; set trainer.monitor "
            f"to one of them (and trainer.monitor_mode).")
    return ([], [text]) if monitor == TrainerConfig.monitor else ([text], [])


def target_components(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(key, node) of every component of `cfg` that optbench builds from a `_target_`."""
    keys = ["model", "data", "params", "optimizer", "scheduler"]
    if cfg.get("gan") is not None:
        keys += ["gan.g", "gan.d", "gan.g_scheduler", "gan.d_scheduler"]
    found = []
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        found += [(key, node), *nested_components(node, key)]
    return found


def check_targets(cfg: DictConfig) -> None:
    """Raise ConfigError listing every `_target_` of `cfg` that the policy refuses, before anything
    else imports or calls one. A target that cannot be imported is left to the signature check."""
    targets.trusts_targets()  # a value other than 0 or 1 is refused even where no target needs it
    problems = []
    for key, node in target_components(cfg):
        target = node.get("_target_")
        if not target:
            continue  # the signature check says that it is missing
        try:
            obj = targets.resolve(str(target), key)
        except ConfigError as e:
            problems += e.problems
            continue
        except Exception:  # ImportError and what a module raises while importing: reported there
            continue
        refusal = targets.name_refusal(obj, node, key) if targets.kind_of(key) == "model" else None
        problems += [refusal] if refusal else []
    if problems:
        raise ConfigError(problems)
