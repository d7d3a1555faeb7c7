"""Performance profiles (Dolan & Moré 2002, as AlgoPerf scores training algorithms, arXiv:2306.07179).

An optimizer is its resolved config (class and every setting that reaches it): runs that differ
in anything else (seed, run length, workload) are the same optimizer. For each optimizer and each
workload (model and data), the time to reach the workload's target is the median over seeds of
the training seconds until the first evaluation that met `data.target` (summary.json's
`target.train_time_s`); a seed that never met it counts as infinite. The performance ratio is
that time over the fastest optimizer's time on the same workload, and the profile of an
optimizer is

    rho(tau) = share of the workloads on which its ratio is <= tau,

so rho(1) is its share of wins and a curve further up and left is better. The score is AlgoPerf's:
the area under rho from tau = 1 to TAU_MAX, divided by TAU_MAX - 1 (1 for the fastest everywhere,
0 for never within TAU_MAX times the fastest).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from optbench.finished_runs import Run, shown

# AlgoPerf integrates the profile up to 4 times the fastest time.
TAU_MAX = 4.0


def workload(run: Run) -> str:
    """The run's workload: its model and data classes, and their settings (the batch size is the
    optimizer's choice, not the workload's)."""
    model, data = run.config("model", {}), run.config("data", {})
    settings = {k: v for k, v in data.items() if k not in ("batch_size", "_target_")}
    name = f"{str(model.get('_target_', '?')).rsplit('.', 1)[-1]}/{str(data.get('_target_', '?')).rsplit('.', 1)[-1]}"
    details = json.dumps([{k: v for k, v in model.items() if k != "_target_"}, settings], sort_keys=True)
    return f"{name} {details}"


def identity(run: Run) -> dict[str, Any]:
    """What makes the run's optimizer the optimizer it is: its resolved config, less the keys that
    never reach it (`_search`, the space `optbench compare` searches)."""
    def settings(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: settings(v) for k, v in node.items() if k == "_target_" or not str(k).startswith("_")}
        return node

    return settings(run.config("optimizer", {}))


def optimizer_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs by optimizer identity, each named by its config option (`adamw`), with the settings
    that tell it apart from other identities of that option (`adamw lr=0.01`). A run that wrote no
    summary has no resolved config, and no time to target either: it is left out."""
    by_identity: dict[str, list[Run]] = {}
    for run in runs:
        if identity(run):
            by_identity.setdefault(json.dumps(identity(run), sort_keys=True), []).append(run)
    names = {key: option_name(members[0]) for key, members in by_identity.items()}
    groups = {}
    for key, members in by_identity.items():
        namesakes = [flat(json.loads(k)) for k in by_identity if names[k] == names[key]]
        own = flat(json.loads(key))
        differing = [f"{k}={shown(v)}" for k, v in own.items() if any(k not in other or other[k] != v for other in namesakes)]
        groups[" ".join([names[key], *differing])] = members
    return groups


def option_name(run: Run) -> str:
    """The optimizer's config option (`adamw`); its class name for a run that does not say."""
    name = run.choices.get("optimizer") or run.overrides.get("optimizer")
    return name or str(run.config("optimizer._target_", "?")).rsplit(".", 1)[-1]


def flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a nested dict."""
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            leaves.update(flat(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def time_to_target(run: Run) -> float:
    """Training seconds until the run first met its workload's target; inf when it never did."""
    target = run.summary.get("target") or {}
    if run.status != "completed" or not target.get("reached"):
        return math.inf
    return float(target.get("train_time_s", target.get("time_s", math.inf)))


@dataclass
class Profiles:
    workloads: list[str]  # short names, in order
    times: dict[str, list[float]]  # optimizer -> median time to target per workload
    ratios: dict[str, list[float]]  # optimizer -> time over the fastest time per workload

    def rho(self, optimizer: str, tau: float) -> float:
        """Share of workloads on which `optimizer` is within `tau` times the fastest."""
        ratios = self.ratios[optimizer]
        return sum(r <= tau for r in ratios) / len(ratios)

    def score(self, optimizer: str) -> float:
        """Area under rho on [1, TAU_MAX] over TAU_MAX - 1 (rho is a step function: exact)."""
        steps = sorted(r for r in self.ratios[optimizer] if r <= TAU_MAX)
        n = len(self.ratios[optimizer])
        area = sum(TAU_MAX - r for r in steps) / n
        return area / (TAU_MAX - 1)


def performance_profiles(groups: dict[str, list[Run]]) -> Profiles | None:
    """Profiles of the optimizers in `groups` (label -> runs); None unless at least two workloads
    have a target that some run reached."""
    by_workload: dict[str, dict[str, list[float]]] = {}
    for optimizer, runs in groups.items():
        for run in runs:
            if run.summary.get("target"):
                by_workload.setdefault(workload(run), {}).setdefault(optimizer, []).append(time_to_target(run))
    solved = {w: times for w, times in by_workload.items()
              if any(math.isfinite(t) for ts in times.values() for t in ts)}
    if len(solved) < 2:
        return None
    names = short_names(list(solved))
    times: dict[str, list[float]] = {o: [] for o in groups}
    ratios: dict[str, list[float]] = {o: [] for o in groups}
    for w in solved:
        medians = {o: statistics.median(solved[w][o]) if o in solved[w] else math.inf for o in groups}
        fastest = min(medians.values())
        for o, t in medians.items():
            times[o].append(t)
            ratios[o].append(t / fastest if math.isfinite(t) else math.inf)
    return Profiles([names[w] for w in solved], times, ratios)


def short_names(keys: list[str]) -> dict[str, str]:
    """Class/function names, with a number where two workloads share them."""
    bare = [k.split(" ", 1)[0] for k in keys]
    return {k: b if bare.count(b) == 1 else f"{b}#{bare[:i + 1].count(b)}" for i, (k, b) in enumerate(zip(keys, bare))}
