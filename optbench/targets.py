"""The `_target_` policy: what a config may name, checked before optbench imports or calls it.

A `_target_` is a dotted path that optbench imports and then calls with the node's keys, so
without a policy a config (a recipe from elsewhere, a sweep's overrides) runs any code:
`optimizer._target_=os.system +optimizer.command=...`. Every place that resolves a `_target_`
goes through `resolve`, which applies three rules:

1. Before importing (importing runs a module's top level: `this` prints, `antigravity` opens a
   browser, a package's `__main__` runs its command line): the path's top-level package is not
   part of Python's standard library, and no part of the path is `__main__`.
2. Before calling: the object is of its component's kind (`KINDS`): a class deriving from the
   kind's base classes, or a Python function annotated to return one (`timm.create_model` and
   `torchvision.models.get_model` return an `nn.Module`; optbench's data sets an `InMemoryData`).
3. A model built by name (`BY_NAME`: timm's and torchvision's) names a model its library lists.

`OPTBENCH_TRUST_TARGETS=1` trusts every `_target_` (code of one's own outside these rules); each
target it lets through is logged, before the run and in the run folder's `optbench.log`.
Hydra instantiates its own plugins (`hydra.launcher`, `hydra.sweeper.sampler`) under Hydra's
own target policy, not this one.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from optbench.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

TRUST_VARIABLE = "OPTBENCH_TRUST_TARGETS"
TRUST_HINT = f"To run code of your own outside this policy, set {TRUST_VARIABLE}=1 (README: Reliability)."

# What each kind of component may name, for the message of a refusal.
KINDS = {
    "optimizer": "a torch.optim.Optimizer subclass (torch's, optbench.optim's, bitsandbytes', your own)",
    "scheduler": ("an LR scheduler: a torch.optim.lr_scheduler.LRScheduler subclass or one of "
                  "optbench.schedules' Schedule classes"),
    "model": ("a torch.nn.Module subclass, or a function annotated to return one (timm.create_model, "
              "torchvision.models.get_model, optbench.models.by_name.timm_model)"),
    "data": ("a data set of optbench's: optbench.data.InMemoryData or optbench.datasets.vision.LoaderData, "
             "a subclass, or a function annotated to return one (optbench.data.digits)"),
    "params": "a parameter-group preset: optbench.param_groups.Rules, LayerDecay or Discriminative, or a subclass",
}


def kind_of(key: str) -> str:
    """The kind of the component at config key `key`: `optimizer.inner` and `gan.g` are optimizers,
    `gan.g_scheduler` is a scheduler."""
    if key in ("model", "data", "params"):
        return key
    return "scheduler" if key.endswith("scheduler") else "optimizer"


# The classes a component of each kind derives from, by path: resolved only when a target is
# checked (they need torch), and named rather than imported so that this module, which the
# builders import, imports none of the modules that define them.
BASES = {
    "optimizer": ("torch.optim.Optimizer",),
    "scheduler": ("torch.optim.lr_scheduler.LRScheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau",
                  "optbench.schedules.Schedule"),
    "model": ("torch.nn.Module",),
    "data": ("optbench.data.InMemoryData", "optbench.datasets.vision.LoaderData"),
    "params": ("optbench.param_groups.Rules", "optbench.param_groups.LayerDecay",
               "optbench.param_groups.Discriminative"),
}


def bases(kind: str) -> tuple[type, ...]:
    """The classes that a component of `kind` derives from."""
    return tuple(import_path(path) for path in BASES[kind])


def trusts_targets() -> bool:
    """Whether the user opted out of the policy (`OPTBENCH_TRUST_TARGETS=1`)."""
    value = os.environ.get(TRUST_VARIABLE, "0")
    if value not in ("0", "1"):
        raise ConfigError(f"{TRUST_VARIABLE}={value}: must be 1 (trust every _target_) or 0 (the policy, "
                          f"the default).")
    return value == "1"


def import_path(target: str) -> Any:
    """The object that a dotted path names (`package.module.Class`), with no policy applied.

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


def import_refusal(target: str) -> str | None:
    """Why rule 1 forbids importing what `target` names (None: it may be imported)."""
    parts = target.split(".")
    if parts[0] in sys.stdlib_module_names:
        return f"{parts[0]} is Python's standard library, which optbench does not import for a config"
    if "__main__" in parts:
        return "a __main__ module runs a command line when it is imported"
    return None


def builds(obj: Any, kinds: tuple[type, ...]) -> bool:
    """Whether `obj` is a class deriving from one of `kinds`, or a function annotated to return one."""
    if inspect.isclass(obj):
        return issubclass(obj, kinds)
    if not inspect.isfunction(obj):
        return False  # builtins (os.system), partials, instances: nothing says what they return
    try:
        returned = typing.get_type_hints(obj).get("return")
    except Exception:  # unresolvable annotations say nothing either
        return False
    return inspect.isclass(returned) and issubclass(returned, kinds)


def kind_refusal(obj: Any, kind: str) -> str | None:
    """Why rule 2 forbids calling `obj` as a component of `kind` (None: it may be called)."""
    if builds(obj, bases(kind)):
        return None
    if inspect.isclass(obj):
        return "a class of another kind"
    if inspect.isfunction(obj):
        return "a function not annotated to return one"
    return f"a {type(obj).__name__}, not a class or a function"


# Records which refusals were logged as trusted, with the logging set-up they were logged to.
_trusted_logged: set[tuple[str, tuple[int, ...]]] = set()


def _refuse_or_trust(target: str, key: str, reason: str) -> None:
    """Raise the refusal of `target` at `key`, or log that the opt-in lets it through.

    Logged once per logging set-up: on the terminal during validation, then again once Hydra has
    set up the job's logging, so that the run folder's own log records it.
    """
    if not trusts_targets():
        raise ConfigError(f"{key}._target_={target}: not allowed ({reason}); it must name "
                          f"{KINDS[kind_of(key)]}. {TRUST_HINT}")
    note = f"{key}._target_={target}: outside the _target_ policy ({reason}); run because {TRUST_VARIABLE}=1."
    logged = (note, tuple(id(h) for h in logging.getLogger().handlers))
    if logged not in _trusted_logged:
        _trusted_logged.add(logged)
        log.warning(note)


def resolve(target: str, key: str) -> Any:
    """What `target` names for the component at config key `key` (`model`, `optimizer.inner`,
    `gan.g_scheduler`, ...), under the policy; ConfigError naming the key, the target and what is
    allowed when the policy forbids it. ImportError when it cannot be imported."""
    reason = import_refusal(target)
    if reason is None:
        obj = import_path(target)
        reason = kind_refusal(obj, kind_of(key))
        if reason is None:
            return obj
    _refuse_or_trust(target, key, reason)
    return import_path(target)


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)  # classifiers, not detection etc.


# Model factories that build a model by name: the argument holding the name, the names the library
# lists, and whether a name may carry a pretrained tag (timm's `resnet18.a1_in1k`).
BY_NAME: dict[str, tuple[str, Callable[[], list[str]], bool]] = {
    "timm.create_model": ("model_name", _timm_names, True),
    "optbench.models.by_name.timm_model": ("model_name", _timm_names, True),
    "torchvision.models.get_model": ("name", _torchvision_names, False),
    "optbench.models.by_name.torchvision_model": ("name", _torchvision_names, False),
}


def name_refusal(obj: Any, node: DictConfig, key: str) -> str | None:
    """Why rule 3 refuses the model name of a by-name factory `obj` (None: not one, or a listed name)."""
    for path, (argument, listed, tagged) in BY_NAME.items():
        # Only a factory whose package is loaded can be `obj`: nothing else is imported to compare.
        if path.split(".")[0] not in sys.modules or import_path(path) is not obj:
            continue
        name = node.get(argument)
        if not isinstance(name, str):
            return None  # unset or not a string: the signature check reports it
        names = listed()
        if (name.split(".", 1)[0] if tagged else name) in names:
            return None
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        lister = "timm.list_models()" if tagged else "torchvision.models.list_models(module=torchvision.models)"
        return (f"{key}.{argument}={name!r}: no such model.{hint} {lister} lists the {len(names)} names "
                f"that {path} builds.")
    return None
