"""Batch-size-aware learning rates: `optimizer.lr_scaling` against `optimizer.reference_batch`.

The configured `optimizer.lr` is the rate for `reference_batch` samples per optimizer step. A run
with another effective batch (data.batch_size x accumulation, over all processes) uses

- `linear`: lr x batch / reference (Goyal et al. 2017, SGD on ImageNet);
- `sqrt`:   lr x sqrt(batch / reference) (Krizhevsky 2014; the chapter's LAMB recipe, You et al. 2020);

as timm's `--lr-base` / `--lr-base-size` / `--lr-base-scale` do. `null` (the default) leaves the
LR as configured. The two keys are optbench's own: they never reach the optimizer's constructor.

The LR after scaling is the run's base LR (`scaled_lr`), the one number that the optimizer's
groups (times their `lr_scale`), the schedules, validation, lr-find and the schedule preview use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf, open_dict

from optbench.build import LR_SCALING_KEYS, base_lr, default_argument, lr_holder

RULES = {"linear": lambda ratio: ratio, "sqrt": math.sqrt}


@dataclass(frozen=True)
class ScaledLR:
    """The run's base LR: the configured one (`optbench.build.base_lr`) after `optimizer.lr_scaling`.

    Floors that a schedule takes as LRs (`eta_min`, `min_lr`) are fractions of `value`.
    """

    value: float | None  # None: the optimizer has no LR
    factor: float  # the scaling's multiplier (1.0 without scaling)
    note: str  # what the scaling did, for the log ("" without scaling)


def problems(node: DictConfig) -> list[str]:
    """What is wrong with the optimizer's `lr_scaling` and `reference_batch` (empty: nothing)."""
    found = []
    rule, reference = node.get("lr_scaling"), node.get("reference_batch")
    if rule is not None and rule not in RULES:
        found.append(f"optimizer.lr_scaling={rule!r}: must be one of {', '.join(map(repr, RULES))} or null.")
    elif rule is not None and base_lr(node) is None:
        found.append(f"optimizer.lr_scaling={rule}: {node._target_} has no lr to scale; set optimizer.lr_scaling=null.")
    valid_reference = isinstance(reference, int) and not isinstance(reference, bool) and reference >= 1
    if "reference_batch" in node and not valid_reference:
        found.append(f"optimizer.reference_batch={reference!r}: must be an integer >= 1 (the batch size that "
                     f"optimizer.lr is meant for).")
    return found


def factor(node: DictConfig, effective_batch: int) -> float:
    """The LR multiplier for `effective_batch` samples per optimizer step (1 without scaling)."""
    rule = node.get("lr_scaling")
    return 1.0 if rule is None else RULES[rule](effective_batch / node.reference_batch)


def other_lrs(holder: DictConfig) -> list[str]:
    """The keys of the LRs that an optimizer has beside `lr` (Muon's `adamw_lr`, for the parameters
    that Muon leaves to AdamW): scaled with it, so that the ratios between them hold."""
    return [str(k) for k, v in holder.items() if str(k).endswith("_lr") and isinstance(v, (int, float))]


def scaled_lr(node: DictConfig, effective_batch: int) -> ScaledLR:
    """The run's base LR for an optimizer config `node` and `effective_batch` samples per optimizer
    step (data.batch_size x accumulation, over all processes)."""
    configured = base_lr(node)
    if node.get("lr_scaling") is None or configured is None:
        return ScaledLR(configured, 1.0, "")
    multiplier = factor(node, effective_batch)
    also = "".join(f", {key} likewise" for key in other_lrs(lr_holder(node)))
    note = (f"optimizer.lr_scaling={node.lr_scaling}: lr {configured:g} x {multiplier:.6g} (effective batch "
            f"{effective_batch} / reference {node.reference_batch}) = {configured * multiplier:g}{also}")
    return ScaledLR(configured * multiplier, multiplier, note)


def planned_batch(cfg: DictConfig) -> int:
    """The effective batch of a run of `cfg`, from the config alone: data.batch_size (the global
    batch; the data set's default where unset) x trainer.accumulation_steps."""
    batch = cfg.data.get("batch_size") or default_argument(cfg.data._target_, "batch_size", "data")
    return batch * cfg.trainer.accumulation_steps


def scaled_optimizer(node: DictConfig, effective_batch: int) -> tuple[DictConfig, ScaledLR]:
    """The optimizer's config with its LRs scaled for `effective_batch` and the scaling settings
    removed, and the run's base LR (`scaled_lr`: the value, the factor and the log's note)."""
    lr = scaled_lr(node, effective_batch)
    scaled = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    with open_dict(scaled):
        for key in LR_SCALING_KEYS:
            scaled.pop(key, None)
    if lr.factor == 1.0:  # no scaling, or the batch is the reference one
        return scaled, lr
    holder = lr_holder(scaled)
    for key in other_lrs(holder):
        holder[key] *= lr.factor
    holder.lr = lr.value  # set, not multiplied: the LR may be the class's default, not a key
    return scaled, lr
