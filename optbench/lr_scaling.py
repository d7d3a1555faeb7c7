"""Batch-size-aware learning rates: `optimizer.lr_scaling` against `optimizer.reference_batch`.

The configured `optimizer.lr` is the rate for `reference_batch` samples per optimizer step. A run
with another effective batch (data.batch_size x accumulation, over all processes) uses

- `linear`: lr x batch / reference (Goyal et al. 2017, SGD on ImageNet);
- `sqrt`:   lr x sqrt(batch / reference) (Krizhevsky 2014; the chapter's LAMB recipe, You et al. 2020);

as timm's `--lr-base` / `--lr-base-size` / `--lr-base-scale` do. `null` (the default) leaves the
LR as configured. The two keys are optbench's own: they never reach the optimizer's constructor.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf, open_dict

from optbench.build import lr_holder

SETTINGS = ("lr_scaling", "reference_batch")  # optimizer keys that are not constructor arguments
RULES = {"linear": lambda ratio: ratio, "sqrt": math.sqrt}


def problems(node: DictConfig) -> list[str]:
    """What is wrong with the optimizer's `lr_scaling` and `reference_batch` (empty: nothing)."""
    found = []
    rule, reference = node.get("lr_scaling"), node.get("reference_batch")
    if rule is not None and rule not in RULES:
        found.append(f"optimizer.lr_scaling={rule!r}: must be one of {', '.join(map(repr, RULES))} or null.")
    elif rule is not None and "lr" not in lr_holder(node):
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


def scaled_optimizer(node: DictConfig, effective_batch: int) -> tuple[DictConfig, str]:
    """The optimizer's config with its LR scaled for `effective_batch` and the scaling settings
    removed, and a sentence for the log (empty without scaling)."""
    scaled = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    with open_dict(scaled):
        for key in SETTINGS:
            scaled.pop(key, None)
    if node.get("lr_scaling") is None:
        return scaled, ""
    multiplier = factor(node, effective_batch)
    holder = lr_holder(scaled)
    old = holder.lr
    holder.lr = old * multiplier
    note = (f"optimizer.lr_scaling={node.lr_scaling}: lr {old:g} x {multiplier:.6g} "
            f"(effective batch {effective_batch} / reference {node.reference_batch}) = {holder.lr:g}")
    return scaled, note
