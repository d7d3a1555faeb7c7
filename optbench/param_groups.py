"""Parameter groups from config: ordered rules that give each parameter an LR scale and a decay.

Rules are tried in order and the first that matches a parameter takes it (regex on the
parameter's name, and optionally its number of dimensions or whether it is one of the parameters
that by convention take no weight decay, `no_weight_decay`). A rule that matches no parameter
is an error: it almost always means a typo in a pattern. Each group carries `lr_scale`; its
`lr` is the optimizer's LR times that scale, and the scheduler scales every group alike.

Presets (`configs/params/`): `none` (one group, every parameter decayed), `no_decay` (no weight
decay where the convention says so), `backbone_head`, `layer_decay` (layer-wise LR decay by
depth, timm/BEiT style) and `discriminative` (LR divided by a factor per stage, ULMFiT style);
all but `none` keep the convention.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from optbench.errors import ConfigError
from optbench.schema import PositiveFloat, UnitInterval


NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)  # BatchNorm, InstanceNorm, ...


def no_weight_decay(model: nn.Module) -> set[str]:
    """The names of the parameters that by convention take no weight decay, timm's convention
    (`timm.optim.param_groups_weight_decay`, which BERT's recipe shares for biases and norms):
    tensors of at most one dimension, biases, the weights of normalisation layers (of any shape),
    and what the model names in its own `no_weight_decay()`, as timm's models do (a ViT's position
    embedding and class token: decayed, they would be pulled to zero like weights, which they are not).
    """
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORMS):
            exempt |= {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
    return exempt | {n for n, p in model.named_parameters() if p.ndim <= 1 or n == "bias" or n.endswith(".bias")}


@dataclass(frozen=True)
class Rule:
    """Parameters whose name matches `pattern` (re.search) and, if set, whose ndim is `ndim` and
    which are (`no_decay: true`) or are not (`false`) among those that by convention take no weight
    decay (`no_weight_decay`)."""

    name: str
    pattern: str = ".*"
    ndim: Optional[int] = None
    no_decay: Optional[bool] = None
    lr_scale: float = 1.0
    weight_decay: Optional[float] = None  # None keeps the optimizer's weight decay

    def matches(self, name: str, param: nn.Parameter, exempt: Collection[str]) -> bool:
        """Whether the rule takes parameter `name`; `exempt`: the model's `no_weight_decay` names."""
        return (re.search(self.pattern, name) is not None and (self.ndim is None or param.ndim == self.ndim)
                and (self.no_decay is None or self.no_decay == (name in exempt)))


def assign(model: nn.Module, rules: Sequence[Rule], key: str = "params.rules") -> list[dict[str, Any]]:
    """Torch parameter groups (`name`, `params`, `lr_scale`, maybe `weight_decay`), in rule order."""
    members: dict[int, list[tuple[str, nn.Parameter]]] = {i: [] for i in range(len(rules))}
    exempt = no_weight_decay(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = next((i for i, rule in enumerate(rules) if rule.matches(name, param, exempt)), None)
        if index is None:
            raise ConfigError(f"{key}: no rule matches parameter '{name}'; end the rules with a catch-all (pattern: '.*').")
        members[index].append((name, param))
    groups = []
    for i, rule in enumerate(rules):
        if not members[i]:
            raise ConfigError(
                f"{key}[{i}] (name={rule.name!r}, pattern={rule.pattern!r}, ndim={rule.ndim}, "
                f"no_decay={rule.no_decay}): matches "
                f"no parameter of {type(model).__name__}. See `optbench list params` for the names."
            )
        group: dict[str, Any] = {
            "name": rule.name,
            "params": [p for _, p in members[i]],
            "param_names": [n for n, _ in members[i]],
            "lr_scale": rule.lr_scale,
        }
        if rule.weight_decay is not None:
            group["weight_decay"] = rule.weight_decay
        groups.append(group)
    return groups


class Rules:
    """Groups from an explicit list of rules (dicts with the fields of `Rule`)."""

    def __init__(self, rules: list[dict[str, Any]]):
        try:
            self.rules = [Rule(**r) for r in rules]
        except TypeError as e:
            raise ConfigError(f"params.rules: {e}; a rule has name, pattern, ndim, no_decay, lr_scale, "
                              f"weight_decay.") from None
        for i, rule in enumerate(self.rules):
            try:
                re.compile(rule.pattern)
            except re.error as e:
                raise ConfigError(f"params.rules[{i}].pattern={rule.pattern!r}: not a regular expression ({e}).") from None

    def groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return assign(model, self.rules)


def top_level(model: nn.Module) -> list[list[str]]:
    """Each top-level child or parameter that holds parameters, in definition order."""
    names = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    names += [n for n, _ in model.named_parameters(recurse=False)]
    return [[n] for n in names]


def layers(model: nn.Module) -> list[list[str]]:
    """The model's layers from input to output, each a list of parameter-name prefixes.

    A model may say (`model.layers()`: embeddings first, head last); otherwise each top-level
    child is one layer.
    """
    return model.layers() if hasattr(model, "layers") else top_level(model)


def depth_groups(
    model: nn.Module, depth_layers: list[list[str]], scales: list[float], names: list[str], no_decay: bool
) -> list[dict[str, Any]]:
    """Groups for layers at given LR scales; with `no_decay`, each layer's parameters that take no
    weight decay by convention (`no_weight_decay`) apart, without it."""
    rules = []
    for prefixes, scale, name in zip(depth_layers, scales, names):
        pattern = "^(" + "|".join(re.escape(p) for p in prefixes) + r")(\.|$)"
        if no_decay:
            rules.append(Rule(f"{name}_no_decay", pattern, no_decay=True, lr_scale=scale, weight_decay=0.0))
        rules.append(Rule(name, pattern, lr_scale=scale))
    # A layer may have no parameters without decay: generated rules that would take nothing are dropped.
    exempt = no_weight_decay(model)
    taken: set[int] = set()
    used = []
    for rule in rules:
        hits = {id(p) for n, p in model.named_parameters() if id(p) not in taken and rule.matches(n, p, exempt)}
        if hits:
            used.append(rule)
            taken |= hits
    return assign(model, used)


class LayerDecay:
    """Layer-wise LR decay: layer d of L (0 = embeddings/stem, L-1 = head) gets decay**(L-1-d)."""

    def __init__(self, decay: UnitInterval = 0.75, no_decay: bool = True):
        self.decay = decay
        self.no_decay = no_decay

    def groups(self, model: nn.Module) -> list[dict[str, Any]]:
        found = layers(model)
        depth = len(found)
        scales = [self.decay ** (depth - 1 - d) for d in range(depth)]
        return depth_groups(model, found, scales, [f"layer{d:02d}" for d in range(depth)], self.no_decay)


class Discriminative:
    """Discriminative fine-tuning: each top-level stage below the head divides the LR by `factor`."""

    def __init__(self, factor: PositiveFloat = 2.6, no_decay: bool = True):
        self.factor = factor
        self.no_decay = no_decay

    def groups(self, model: nn.Module) -> list[dict[str, Any]]:
        stages = top_level(model)
        scales = [self.factor ** -(len(stages) - 1 - s) for s in range(len(stages))]
        return depth_groups(model, stages, scales, [s[0] for s in stages], self.no_decay)
