"""`optbench schedules`: the LR (and cycled momentum) of one or more schedulers over a run, without
training. Every value goes to a CSV, and the PNG is drawn from exactly those values.

Each curve is the scheduler a run with the same overrides would build (the same compose and
validation as `optbench run`), stepped once per optimizer step on a stand-in parameter.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from optbench.commands.common import reports_bad_input, timestamped_output, writable_folder
from optbench.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.schedules import Schedule

EXAMPLES = """examples:
  optbench schedules scheduler=step,cosine,onecycle,warmup_cosine trainer.max_steps=1000
  optbench schedules scheduler=cosine scheduler.warmup=0,0.05,0.1 trainer.max_steps=5000 --log
  # the chapter's scheduler comparison figure (section 5.8):
  optbench schedules scheduler=step,exponential,cosine,onecycle,warmup_cosine optimizer=sgd \\
      scheduler.min_lr_ratio=0 trainer.max_steps=1000 --log

Several values of a key (a,b,c) give one curve each (every combination). A scheduler.FIELD
override applies to the schedulers that have FIELD."""

# `scheduler.FIELD=...` (the top-level field): applied only to the schedulers that have FIELD.
SCHEDULER_FIELD = re.compile(r"^scheduler\.([^.=]+)[.=]")

# What a column holds, after its curve's label: `lr` or `momentum`, then `/<group>` for groups
# after the first (the names metrics.jsonl uses).
QUANTITIES = ("lr", "momentum")


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="optbench schedules",
        description="LR (and cycled momentum) of one or more schedulers over a run, without "
        "training: a PNG and a CSV of the same values.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log", action="store_true", help="log-scale LR axis")
    parser.add_argument("--out", type=Path, help="folder for schedules.png and schedules.csv "
                        "(default: outputs/schedules/DATE/TIME)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for optbench run")
    return parser.parse_args(args)


@reports_bad_input
def main(args: list[str]) -> int:
    options = parse_args(args)  # argparse itself exits with status 2 on a bad flag
    if options.out is not None:
        writable_folder("--out", options.out)
    curves, notes = build_curves(options.overrides)
    columns = table(curves)
    out = options.out or timestamped_output("schedules")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(columns, out / "schedules.csv")
    draw(columns, options.log).savefig(out / "schedules.png", dpi=150)
    for note in notes:
        print(f"optbench schedules: warning: {note}", file=sys.stderr)
    print(f"wrote {out / 'schedules.png'}\nwrote {out / 'schedules.csv'}")
    return 0


def build_curves(overrides: list[str]) -> tuple[list[tuple[str, dict[str, list[float]]]], list[str]]:
    """(label, its series) for every combination of the overrides' values, and warnings."""
    from optbench.build import build_schedule, is_schedule, planned_length, stand_in_scheduler
    from optbench.lr_scaling import planned_batch, scaled_optimizer
    from optbench.schedules import Plateau
    from optbench.validate import validate_config

    curves, notes = [], []
    for label, cfg in compose_variants(overrides):
        notes += [f"{label}: {note}" for note in validate_config(cfg, preview=True)]
        run_steps, steps_per_epoch = planned_length(cfg)
        # The run's base LR and optimizer are those after optimizer.lr_scaling.
        optimizer, scaled = scaled_optimizer(cfg.optimizer, planned_batch(cfg))
        base_lr = scaled.value
        if is_schedule(cfg.scheduler):
            if not isinstance(base_lr, (int, float)) or base_lr <= 0:
                raise ConfigError(f"optimizer.lr={base_lr}: the preview needs the base LR, a number > 0.")
            schedule = build_schedule(cfg.scheduler, run_steps, steps_per_epoch, base_lr)
            if isinstance(schedule, Plateau):
                notes.append(f"{label}: LR reductions follow validation metrics while training; "
                             f"without training none is shown.")
            curves.append((label, trace_schedule(schedule, base_lr, run_steps)))
        else:
            scheduler = stand_in_scheduler(optimizer, cfg.scheduler, run_steps, steps_per_epoch)
            curves.append((label, trace_scheduler(scheduler, run_steps)))
    return curves, notes


def compose_variants(overrides: list[str]) -> list[tuple[str, DictConfig]]:
    """(label, composed config) for every combination of swept values (`key=a,b,c`)."""
    from optbench.config import compose, sweep_choices

    choices = sweep_choices(overrides)
    swept = {value for values in choices if len(values) > 1 for value in values}

    result, used = [], set()
    for variant in itertools.product(*choices):
        fields = [o for o in variant if SCHEDULER_FIELD.match(o)]
        others = [o for o in variant if o not in fields]
        if fields:  # keep the fields this variant's scheduler has
            keys = compose(others).scheduler.keys()
            fields = [o for o in fields if SCHEDULER_FIELD.match(o).group(1) in keys]
            used.update(fields)
        cfg = compose(others + fields)
        extra = [o.removeprefix("scheduler.") for o in variant if o in swept and not o.startswith("scheduler=")]
        result.append((" ".join([cfg.hydra.runtime.choices.scheduler, *extra]), cfg))
    unused = [o for values in choices for o in values if SCHEDULER_FIELD.match(o) and o not in used]
    if unused:  # a field no scheduler has: compose it to get optbench's message for a wrong key
        compose([o for o in next(itertools.product(*choices)) if not SCHEDULER_FIELD.match(o)] + unused[:1])
    return result


def trace_schedule(schedule: Schedule, base_lr: float, steps: int) -> dict[str, list[float]]:
    """The LR (and cycled momentum) that optimizer steps 0 .. steps-1 of a run use: what
    `ScheduledLR` sets, `base_lr * schedule(step)` (LambdaLR's own expression), without torch."""
    series = {"lr": [base_lr * schedule(step) for step in range(steps)]}
    if schedule.cycle_momentum:
        series["momentum"] = [schedule.momentum(step) for step in range(steps)]
    return series


def trace_scheduler(scheduler: Any, steps: int) -> dict[str, list[float]]:
    """The same for a torch scheduler class, stepped: each parameter group's values as the
    run's train lines name them (`lr`, `lr/<group>`, `momentum` where cycled)."""
    from optbench.metrics_log import per_group
    from optbench.lr_scheduler import cycled_momenta

    groups = scheduler.optimizer.param_groups
    series: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        # Nothing trains here, so no optimizer step precedes the scheduler's: torch's check of
        # that order does not apply.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for _ in range(steps):
            values = {**per_group("lr", [g["lr"] for g in groups], groups),
                      **per_group("momentum", cycled_momenta(scheduler), groups)}
            for name, value in values.items():
                series.setdefault(name, []).append(float(value))
            scheduler.step()
    return series


def table(curves: list[tuple[str, dict[str, list[float]]]]) -> dict[str, list[float]]:
    """Columns `step` and `<label>/<quantity>[/<group>]`, NaN past the end of a shorter run."""
    length = max(len(values) for _, series in curves for values in series.values())
    columns: dict[str, list[float]] = {"step": [float(s) for s in range(length)]}
    for label, series in curves:
        for name, values in series.items():
            columns[f"{label}/{name}"] = values + [math.nan] * (length - len(values))
    return columns


def write_csv(columns: dict[str, list[float]], path: Path) -> None:
    """Every value, with the digits that give back the same float; an empty cell past a run's end."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in zip(*columns.values()):
            writer.writerow([int(row[0]), *("" if math.isnan(v) else repr(v) for v in row[1:])])


def read_csv(path: Path) -> dict[str, list[float]]:
    """The columns that `write_csv` wrote."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return {name: [float(row[i]) if row[i] else math.nan for row in rows[1:]] for i, name in enumerate(rows[0])}


def split_column(name: str) -> tuple[str, str, str | None]:
    """(curve label, quantity, parameter group or None for the first) of a column name."""
    head, _, last = name.rpartition("/")
    if last in QUANTITIES:
        return head, last, None
    label, _, quantity = head.rpartition("/")
    return label, quantity, last


def draw(columns: dict[str, list[float]], log_scale: bool) -> Figure:
    """The chapter's comparison figure from `columns`: LR against step, and a momentum panel
    below it where a schedule cycles momentum."""
    from matplotlib.figure import Figure

    from optbench.commands.report_plots import line_styles

    curves = [(split_column(name), values) for name, values in columns.items() if name != "step"]
    with_momentum = any(quantity == "momentum" for (_, quantity, _), _ in curves)
    figure = Figure(figsize=(14, 10 if with_momentum else 8), layout="constrained")
    if with_momentum:
        lr_axis, momentum_axis = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        momentum_axis.set_ylabel("Momentum / beta1")
    else:
        lr_axis = momentum_axis = figure.subplots()
    labels = list(dict.fromkeys(label for (label, _, _), _ in curves))
    # One style per line (a curve's parameter groups are lines of their own), the same in both panels.
    styles = line_styles(list(dict.fromkeys((label, group) for (label, _, group), _ in curves)))
    title = "Learning Rate Scheduler Comparison" if len(labels) > 1 else f"Learning Rate Schedule: {labels[0]}"
    lr_axis.set_title(title)
    lr_axis.set_ylabel("Learning Rate")
    if log_scale:
        lr_axis.set_yscale("log", nonpositive="mask")  # a warmup's LR 0 has no place on a log axis
    for (label, quantity, group), values in curves:
        axis = lr_axis if quantity == "lr" else momentum_axis
        name = label if group is None else f"{label} ({group})"
        color, linestyle = styles[label, group]
        axis.plot(columns["step"], values, label=name, color=color, linestyle=linestyle, linewidth=2)
    for axis in {lr_axis, momentum_axis}:
        axis.grid(True, alpha=0.3)
        axis.legend()
    (momentum_axis if with_momentum else lr_axis).set_xlabel("Step")
    return figure
