"""The report's figures: curves per group with a band over seeds, LR sensitivity, performance profiles."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

from collections.abc import Callable

from optbench.profiles import TAU_MAX, Profiles
from optbench.finished_runs import Run, RankingMetric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.commands.report import Sensitivity

Series = Callable[[Run], dict[int, float]]  # a run's curve: step -> value


def seed_band(runs: list[Run], curve: Series) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, min, max) over the runs at the steps that every run logged; the band is
    the spread over seeds (a single run has a band of zero width)."""
    series = [curve(run) for run in runs]
    series = [s for s in series if s]
    if not series:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(s) for s in series)))
    columns = [[s[step] for s in series] for step in steps]
    return (steps, [statistics.fmean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns])


def draw_curves(groups: dict[str, list[Run]], target: RankingMetric) -> Figure:
    """Train loss, validation metric, LR and gradient norm against step, one color a group, and
    the total weight norm where the runs wrote diagnostics."""
    from matplotlib.figure import Figure

    metric = target.name.removeprefix("val/")
    panels: list[tuple[str, Series, bool]] = [
        ("train loss", lambda r: r.series("train", "loss"), True),
        (target.name, lambda r: r.series("val", metric), not target.maximize),  # a loss: log scale
        ("learning rate", lambda r: r.series("train", "lr"), False),
        ("gradient norm", lambda r: r.series("train", "grad_norm"), True),
    ]
    if any(run.diagnostics for runs in groups.values() for run in runs):
        panels.append(("weight norm (all weights, diagnostics.jsonl)", Run.weight_norm, False))
    rows = math.ceil(len(panels) / 2)
    figure = Figure(figsize=(13, 4.5 * rows), layout="constrained")
    axes = list(figure.subplots(rows, 2).flat)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    for axis, (title, curve, log_scale) in zip(axes, panels):
        for i, (group, runs) in enumerate(groups.items()):
            steps, mean, low, high = seed_band(runs, curve)
            if not steps:
                continue
            color = f"C{i % 10}"
            seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
            axis.plot(steps, mean, color=color, label=f"{group}{seeds}", linewidth=1.8)
            axis.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        axis.set_title(title)
        axis.set_xlabel("step")
        if log_scale and axis.has_data():
            axis.set_yscale("log", nonpositive="mask")
        axis.grid(True, alpha=0.3)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")
    return figure


def draw_sensitivity(curves: list[Sensitivity], target: RankingMetric) -> Figure:
    """Best metric against LR per group, the LR range within 5% of the best shaded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 6), layout="constrained")
    axis = figure.subplots()
    for i, curve in enumerate(curves):
        color = f"C{i % 10}"
        axis.plot(curve.lrs, curve.values, "o-", color=color, label=curve.group)
        failed = [lr for lr, v in zip(curve.lrs, curve.values) if math.isnan(v)]
        if failed:  # diverged LRs: marked on the axis instead of silently missing
            axis.plot(failed, [axis.get_ylim()[0]] * len(failed), "x", color=color, markersize=10)
        span = curve.robust_range(target.maximize)
        if span is not None:
            axis.axvspan(span[0] / 1.05, span[1] * 1.05, color=color, alpha=0.12)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel(f"best {target.name} (mean over seeds)")
    axis.set_title("LR sensitivity (shaded: within 5% of the best; x: diverged)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small")
    return figure


def draw_profiles(profiles: Profiles) -> Figure:
    """rho(tau) per optimizer: a step up at each workload's performance ratio."""
    from matplotlib.figure import Figure

    finite = [r for ratios in profiles.ratios.values() for r in ratios if math.isfinite(r)]
    right = max(TAU_MAX, *finite) * 1.05
    figure = Figure(figsize=(9, 6), layout="constrained")
    axis = figure.subplots()
    for i, (optimizer, ratios) in enumerate(profiles.ratios.items()):
        taus = [1.0, *sorted(r for r in ratios if math.isfinite(r)), right]
        axis.step(taus, [profiles.rho(optimizer, t) for t in taus], where="post", color=f"C{i % 10}",
                  linewidth=2, label=f"{optimizer} (score {profiles.score(optimizer):.2f})")
    axis.axvline(TAU_MAX, color="grey", linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlim(1, right)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("tau: time to target over the fastest optimizer's")
    axis.set_ylabel("share of workloads within tau")
    axis.set_title(f"Performance profiles over {len(profiles.workloads)} workloads (score: area to tau={TAU_MAX:g})")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small", loc="lower right")
    return figure
