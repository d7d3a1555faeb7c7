"""The report's figures: curves per group with a band over seeds, LR sensitivity, performance profiles."""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from typing import TYPE_CHECKING, Any

from collections.abc import Callable

from optbench.profiles import TAU_MAX, Profiles
from optbench.finished_runs import SEED_KEY, Run, RankingMetric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.commands.report import Sensitivity

Series = Callable[[Run], dict[int, float]]  # a run's curve: step -> value
LINE_STYLES = ["-", "--", ":", "-."]  # for groups that share a colour (one optimizer's LRs)


def line_styles(keys: list[Any]) -> dict[Any, tuple[str, str]]:
    """A distinct (colour, line style) per key: matplotlib's 10 colours, then the same colours
    in the next line style (distinct for up to 40 keys, then they repeat)."""
    return {key: (f"C{i % 10}", LINE_STYLES[i // 10 % len(LINE_STYLES)]) for i, key in enumerate(keys)}


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


def draw_curves(groups: dict[str, list[Run]], target: RankingMetric, colours: dict[str, str] | None = None) -> Figure:
    """Train loss, validation metric, LR and gradient norm against step, and the total weight norm
    where the runs wrote diagnostics. A group's colour is `colours[group]` (one each by default);
    groups of one colour differ in line style."""
    from matplotlib.figure import Figure

    colours = colours or {group: f"C{i % 10}" for i, group in enumerate(groups)}
    styles: dict[str, str] = {}
    for group in groups:
        styles[group] = LINE_STYLES[sum(colours[g] == colours[group] for g in styles) % len(LINE_STYLES)]
    metric = target.name.removeprefix("val/")
    every_run = [run for runs in groups.values() for run in runs]
    panels: list[tuple[str, Series, bool]] = [
        ("train loss", lambda r: r.series("train", "loss"), True),
        (target.name, lambda r: r.series("val", metric), not target.maximize),  # a loss: log scale
        ("learning rate", learning_rate, spans_decades(every_run, learning_rate)),
        ("gradient norm", lambda r: r.series("train", "grad_norm"), True),
    ]
    if any(run.diagnostics for run in every_run):
        panels.append(("weight norm (all weights, diagnostics.jsonl)", Run.weight_norm, False))
    rows = math.ceil(len(panels) / 2)
    figure = Figure(figsize=(13, 4.5 * rows), layout="constrained")
    axes = list(figure.subplots(rows, 2).flat)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    for axis, (title, curve, log_scale) in zip(axes, panels):
        bands = {group: seed_band(runs, curve) for group, runs in groups.items()}
        widths = stacked_widths({group: band[:2] for group, band in bands.items()})
        for group, (steps, mean, low, high) in bands.items():
            if not steps:
                continue
            axis.plot(steps, mean, color=colours[group], linestyle=styles[group],
                      label=legend_entry(group, groups[group]), linewidth=widths[group])
            axis.fill_between(steps, low, high, color=colours[group], alpha=0.2, linewidth=0)
        axis.set_title(title)
        axis.set_xlabel("step")
        if log_scale and axis.has_data():
            axis.set_yscale("log", nonpositive="mask")
        axis.grid(True, alpha=0.3)
    legend_below(figure, *figure.axes[0].get_legend_handles_labels())
    return figure


def legend_entry(group: str, runs: list[Run]) -> str:
    """A curve's name and what its line aggregates: its seeds, counted by `trainer.seed` (runs of
    one seed repeated are not more seeds)."""
    seeds = len({json.dumps(run.value(SEED_KEY)) for run in runs})
    if len(runs) == 1:
        return group
    if seeds == len(runs):
        return f"{group} ({seeds} seeds)"
    return f"{group} ({len(runs)} runs, {seeds} seed{'s' * (seeds > 1)})"


def learning_rate(run: Run) -> dict[int, float]:
    return run.series("train", "lr")


def stacked_widths(lines: dict[str, tuple[list[int], list[float]]]) -> dict[str, float]:
    """A line width per group, for lines drawn in order: of lines that are equal (one schedule at
    one LR gives every optimizer the same LR curve), each earlier one is wider than the next, so
    the lines drawn on top of it leave its edges visible."""
    later_equal = {group: sum(other == line for other in list(lines.values())[i + 1:])
                   for i, (group, line) in enumerate(lines.items())}
    return {group: 1.8 + 2.4 * count for group, count in later_equal.items()}


def spans_decades(runs: list[Run], curve: Series) -> bool:
    """Whether the runs' peak values differ tenfold or more: a linear axis would flatten the lower ones."""
    peaks = [max(values) for values in (curve(run).values() for run in runs) if values]
    return bool(peaks) and min(peaks) > 0 and max(peaks) >= 10 * min(peaks)


def legend_below(figure: Figure, handles: list[Any], labels: list[str]) -> None:
    """The figure's legend under its panels, in as many columns (3 at most) as fit its width, and
    labels wrapped where one column is too wide: a wider legend is cut off on both sides."""
    if not handles:
        return
    for ncols in range(min(3, len(labels)), 0, -1):
        legend = figure.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small")
        width = legend.get_window_extent().width
        if width <= 0.95 * figure.bbox.width:
            return
        legend.remove()
    chars = int(max(map(len, labels)) * 0.9 * figure.bbox.width / width)
    figure.legend(handles, [textwrap.fill(text, chars) for text in labels], loc="outside lower center",
                  fontsize="small")


def draw_sensitivity(curves: list[Sensitivity], target: RankingMetric, colours: dict[str, str] | None = None) -> Figure:
    """Best metric against LR per group (coloured `colours[group]`, one each by default), the LR
    range within 5% of the best shaded."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 6), layout="constrained")
    axis = figure.subplots()
    for i, curve in enumerate(curves):
        color = colours[curve.group] if colours else f"C{i % 10}"
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
    legend_below(figure, *axis.get_legend_handles_labels())
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
    legend_below(figure, *axis.get_legend_handles_labels())
    return figure
