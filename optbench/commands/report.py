"""`optbench report PATH...`: finished runs side by side.

Writes, into one folder: `report.csv` (one row a run, best first), `curves.png` (train loss,
validation metric, LR and gradient norm per group, mean and min-max band over seeds, and the
weight norm where runs wrote diagnostics), `lr_sensitivity.png` (where an optimizer ran at two LRs
or more), `performance_profiles.png` (where runs of several workloads are present), and
`report.html`, which holds the same tables and the PNGs inline so that it can be sent as one file.
Runs are compared by the values they ran with (an optimizer's default LR included), not by how
their command lines spelled them.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import math
import statistics
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optbench.commands.common import reports_bad_input, timestamped_output, writable_folder
from optbench.profiles import TAU_MAX, Profiles, optimizer_groups, performance_profiles
from optbench.finished_runs import (LR_KEY, SEED_KEY, Run, RankingMetric, find_runs, group_runs, label, run_names,
                                    shown, varied_keys)
from optbench.run_folder import RunFolder

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console
    from rich.table import Table as RichTable

# An LR counts as "as good as the best" when its metric is within this fraction of the best one.
ROBUST_TOLERANCE = 0.05
# Paired comparisons whose p-value is below this say which optimizer is better.
SIGNIFICANCE = 0.05
# Fewest seeds for a verdict: with two, the t-test estimates the spread from one degree of freedom,
# and two nearly equal differences (common with accuracies on a small validation set) make any
# difference look certain. Three is also what `optbench compare` runs by default.
MIN_SEEDS = 3

Table = tuple[list[str], list[list[Any]]]


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="optbench report",
        description="Compare finished runs (single runs or multirun folders): a table, report.csv, "
        "PNG plots and a self-contained report.html.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or folders above them")
    parser.add_argument("--out", type=Path, help="output folder (default: FIRST_PATH/report, or "
                        "outputs/report/DATE/TIME when FIRST_PATH is one run's folder)")
    parser.add_argument("--target", type=float, help="metric value whose first reach is reported "
                        "as steps and time to target")
    return parser.parse_args(args)


@reports_bad_input
def main(args: list[str]) -> int:
    options = parse_args(args)
    if options.out is not None:
        writable_folder("--out", options.out)
    runs = find_runs(options.paths)
    out = options.out or default_out(options.paths[0])
    out.mkdir(parents=True, exist_ok=True)
    written = write_report(runs, out, options.target)
    for path in written:
        print(f"wrote {path}")
    return 0


def default_out(first: Path) -> Path:
    """Where a report goes without --out: `report/` in the folder above the runs (a sweep folder,
    `outputs`), but never inside one run's folder, which no command modifies once it is finished."""
    if RunFolder(first).overrides.is_file():
        return timestamped_output("report")
    return first / "report"


def write_report(runs: list[Run], out: Path, target_value: float | None = None) -> list[Path]:
    """Every output of the report for `runs` into `out`; the paths written."""
    from rich.console import Console

    keys = varied_keys(runs)
    target = RankingMetric.of(runs)
    tables = {"Runs": run_table(runs, keys, target, target_value)}
    sensitivity = lr_sensitivity(runs, keys, target)
    if sensitivity:
        tables["LR sensitivity"] = sensitivity_table(sensitivity, target)
    # Each optimizer is compared at its own best LR: comparing every LR of one with every LR of
    # another answers a question nobody asked.
    others = [k for k in keys if k != LR_KEY]
    comparisons = paired_comparisons(at_best_lr(runs, others, sensitivity, target), others, target)
    if comparisons[1]:
        tables["Paired comparisons over seeds"] = comparisons
    profiles = performance_profiles(optimizer_groups(runs))
    if profiles is not None:
        tables["Performance profiles (time to target)"] = profile_table(profiles)

    csv_path = out / "report.csv"
    write_csv(tables["Runs"], csv_path)
    figures = draw_figures(runs, keys, target, sensitivity, profiles)
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=120)

    console = Console()
    for title, table in tables.items():
        console.print(rich_table(title, table, console))
    html_path = out / "report.html"
    html_path.write_text(render_html(tables, [out / name for name in figures], target, runs))
    return [csv_path, *(out / name for name in figures), html_path]


def draw_figures(runs: list[Run], keys: list[str], target: RankingMetric, sensitivity: list[Sensitivity],
                 profiles: Profiles | None) -> dict[str, Figure]:
    """file name -> figure: the curves, and the LR sensitivity and performance profiles where there are some."""
    from optbench.commands.report_plots import draw_curves, draw_profiles, draw_sensitivity

    # One colour per group of the keys other than LR, in every figure: an optimizer's LRs share
    # its colour in curves.png (told apart by line style) and match its line in lr_sensitivity.png.
    others = [k for k in keys if k != LR_KEY]
    palette = {name: f"C{i % 10}" for i, name in enumerate(group_runs(runs, others))}
    curve_groups = group_runs(runs, keys)
    colours = {name: palette[label(members[0], others)] for name, members in curve_groups.items()}
    figures = {"curves.png": draw_curves(curve_groups, target, colours)}
    if sensitivity:
        figures["lr_sensitivity.png"] = draw_sensitivity(sensitivity, target, palette)
    if profiles is not None:
        figures["performance_profiles.png"] = draw_profiles(profiles)
    return figures


def run_table(runs: list[Run], keys: list[str], target: RankingMetric, target_value: float | None) -> Table:
    """One row a run, best first by the ranking metric (runs without a value last): its name,
    status, the varied settings, the target metric, speed and memory."""
    header = ["run", "status", *keys, "steps", f"final {target.name}", f"best {target.name}",
              "final train/loss", "wall time (s)", "samples/s", "optimizer state (MiB)", "peak memory (MiB)"]
    if target_value is not None:
        header += ["steps to target", "time to target (s)"]
    rows = []
    for run, name in ranked(runs, run_names(runs), target):
        s = run.summary
        row = [name, run.status, *(shown(run.value(k)) for k in keys), s.get("steps", ""),
               _fmt(target.final(run)), _fmt(target.best(run)), _fmt(s.get("final", {}).get("train/loss")),
               _fmt(s.get("wall_time_s"), 2), _fmt(s.get("samples_per_s"), 1),
               _fmt(_mib(s.get("optimizer_state_bytes")), 3), _fmt(_mib((s.get("peak_memory") or {}).get("bytes")), 3)]
        if target_value is not None:
            row += list(time_to_target(run, target, target_value))
        rows.append(row)
    return header, rows


def ranked(runs: list[Run], names: list[str], target: RankingMetric) -> list[tuple[Run, str]]:
    """(run, name) pairs, best first; runs without a value (failed, incomplete) last, in run order."""
    def key(pair: tuple[Run, str]) -> tuple[bool, float]:
        value = target.best(pair[0])
        return math.isnan(value), -value if target.maximize else value

    return sorted(zip(runs, names), key=key)


def time_to_target(run: Run, target: RankingMetric, value: float) -> tuple[Any, Any]:
    """(steps, seconds) at the first evaluation that reached `value`; blanks if none did."""
    name = target.name.removeprefix("val/")
    for line in run.metrics:
        if line.get("split") == "val" and line.get(name) is not None and target.reached(line[name], value):
            return line["step"], _fmt(line["time"], 2)
    return "", ""


@dataclass
class Sensitivity:
    """Mean best metric (over seeds) against LR, for one group of runs that differ in LR only."""

    group: str
    lrs: list[float]
    values: list[float]

    def best_lr(self, maximize: bool) -> float | None:
        finite = [i for i, v in enumerate(self.values) if not math.isnan(v)]
        if not finite:
            return None
        pick = max if maximize else min
        return self.lrs[pick(finite, key=lambda i: self.values[i])]

    def robust_range(self, maximize: bool) -> tuple[float, float] | None:
        """The contiguous LR range around the best LR whose metric is within ROBUST_TOLERANCE of
        the best; None when every LR failed."""
        best_lr = self.best_lr(maximize)
        if best_lr is None:
            return None
        best_i = self.lrs.index(best_lr)
        best = self.values[best_i]
        slack = ROBUST_TOLERANCE * abs(best)

        def good(i: int) -> bool:
            v = self.values[i]
            return not math.isnan(v) and (v >= best - slack if maximize else v <= best + slack)

        lo = hi = best_i
        while lo > 0 and good(lo - 1):
            lo -= 1
        while hi < len(self.values) - 1 and good(hi + 1):
            hi += 1
        return self.lrs[lo], self.lrs[hi]


def lr_sensitivity(runs: list[Run], keys: list[str], target: RankingMetric) -> list[Sensitivity]:
    """One curve per group of the other varied keys (typically per optimizer) that ran at two LRs
    or more, each run at its resolved LR (the optimizer's default where the command gave none)."""
    if LR_KEY not in keys:
        return []
    others = [k for k in keys if k != LR_KEY]
    result = []
    for group, members in group_runs(runs, others).items():
        by_lr: dict[float, list[float]] = {}
        for run in members:
            if run.value(LR_KEY) is not None:
                by_lr.setdefault(float(run.value(LR_KEY)), []).append(target.best(run))
        if len(by_lr) < 2:  # one LR measures no sensitivity: its "robustness" would read 0 decades
            continue
        lrs = sorted(by_lr)
        # A diverged seed makes the LR a failure: a mean that hides it would flatter the LR.
        values = [math.nan if any(math.isnan(v) for v in by_lr[lr]) else statistics.fmean(by_lr[lr]) for lr in lrs]
        result.append(Sensitivity(group, lrs, values))
    return result


def at_best_lr(runs: list[Run], others: list[str], curves: list[Sensitivity], target: RankingMetric) -> list[Run]:
    """The runs of each sensitivity group (a group of the keys `others`) at that group's best LR;
    the runs of a group that ran at one LR only, all."""
    best = {curve.group: curve.best_lr(target.maximize) for curve in curves}
    return [run for run in runs if label(run, others) not in best
            or run.value(LR_KEY) is not None and float(run.value(LR_KEY)) == best[label(run, others)]]


def sensitivity_table(curves: list[Sensitivity], target: RankingMetric) -> Table:
    header = ["group", "best LR", f"best {target.name}", "LR range within 5% of best", "robustness (decades)"]
    rows = []
    for curve in curves:
        span = curve.robust_range(target.maximize)
        if span is None:
            rows.append([curve.group, "", "", "every LR failed", 0.0])
            continue
        best_i = curve.lrs.index(curve.best_lr(target.maximize))
        rows.append([curve.group, f"{curve.lrs[best_i]:g}", _fmt(curve.values[best_i]),
                     f"{span[0]:g} .. {span[1]:g}", round(math.log10(span[1] / span[0]), 2)])
    return header, rows


def paired_comparisons(runs: list[Run], keys: list[str], target: RankingMetric) -> Table:
    """Every two groups compared on the seeds both ran (paired t-test of their best metric); a
    verdict only from MIN_SEEDS seeds on, and the verdict column says why where there is none."""
    header = ["A", "B", "seeds", "mean A-B", "p-value", "verdict"]
    rows: list[list[Any]] = []
    if SEED_KEY not in keys:
        return header, rows
    groups = {name: {r.value(SEED_KEY): target.best(r) for r in members}
              for name, members in group_runs(runs, keys).items()}
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = [s for s in groups[a] if s in groups[b]
                     and not math.isnan(groups[a][s]) and not math.isnan(groups[b][s])]
            if seeds:
                diffs = [groups[a][s] - groups[b][s] for s in seeds]
                mean = statistics.fmean(diffs)
                p, verdict = paired_verdict(diffs, a if target.better(mean, 0.0) else b)
                rows.append([a, b, len(seeds), _fmt(mean), p, verdict])
    return header, rows


def paired_verdict(diffs: list[float], ahead: str) -> tuple[str, str]:
    """(p-value as shown, verdict) of a paired t-test on the per-seed differences A-B; `ahead` is
    the group that the mean difference favours."""
    from scipy.stats import ttest_1samp

    if len(diffs) < MIN_SEEDS:
        return "", f"no verdict: {len(diffs)} seed{'s' * (len(diffs) > 1)}, a verdict needs {MIN_SEEDS}"
    # The same difference on every seed (to rounding) leaves the t-test no spread to divide by:
    # scipy would answer p = 0 (or NaN) and warn of catastrophic cancellation.
    if max(diffs) - min(diffs) <= 1e-9 * max(1.0, *map(abs, diffs)):
        if abs(diffs[0]) <= 1e-9:
            return "1", "not distinguishable"
        return "", "no verdict: the same difference on every seed, so the t-test has no spread to judge"
    with warnings.catch_warnings():  # the report prints tables, never a library's warnings
        warnings.simplefilter("ignore")
        p = float(ttest_1samp(diffs, 0.0).pvalue)  # the paired t-test is this test on the differences
    return f"{p:.2g}", f"{ahead} better" if p < SIGNIFICANCE else "not distinguishable"


def profile_table(profiles: Profiles) -> Table:
    """Per optimizer: time to target and performance ratio on each workload, rho(1) and the score."""
    header = ["optimizer", *(f"{w}: s to target (ratio)" for w in profiles.workloads), "rho(1): wins",
              f"score (area to tau={TAU_MAX:g})"]
    rows = []
    for optimizer, times in profiles.times.items():
        cells = [f"{t:.3g} ({r:.2f})" if math.isfinite(t) else "not reached"
                 for t, r in zip(times, profiles.ratios[optimizer])]
        rows.append([optimizer, *cells, round(profiles.rho(optimizer, 1.0), 3), round(profiles.score(optimizer), 3)])
    return header, rows


def write_csv(table: Table, path: Path) -> None:
    header, rows = table
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# The columns that a narrow terminal leaves out, first to last (report.csv and report.html keep all).
DROPPED_FIRST = ("peak memory (MiB)", "optimizer state (MiB)", "time to target (s)", "samples/s",
                 "final train/loss", "steps", "status", "rho(1): wins", "robustness (decades)", "p-value")


def rich_table(title: str, table: Table, console: Console) -> RichTable:
    """`table` for the terminal, as wide as `console` at most: labels wrap, a dotted key shows its
    last part where that is unambiguous, and columns are left out in the order of DROPPED_FIRST
    until the rest fits without breaking a word (the caption names them); a cell is never cut."""
    from rich.table import Table as RichTable

    header, rows = table
    ends = [name.rsplit(".", 1)[-1] for name in header]
    labels = [end if ends.count(end) == 1 else name for name, end in zip(header, ends)]  # optimizer.lr -> lr
    columns = [[labels[i], *(str(row[i]) for row in rows)] for i in range(len(header))]
    droppable = [header.index(name) for name in DROPPED_FIRST if name in header]
    kept = list(range(len(header)))
    while _table_width([_longest_word(columns[i]) for i in kept]) > console.width and droppable:
        kept.remove(droppable.pop(0))
    dropped = [name for i, name in enumerate(header) if i not in kept]
    caption = f"not shown at this width: {', '.join(dropped)} (report.csv and report.html have them)" if dropped else None
    view = RichTable(title=title, caption=caption, caption_justify="left")
    for i, width in zip(kept, _column_widths([columns[i] for i in kept], console.width)):
        view.add_column(labels[i], width=width, overflow="fold")  # were it still too narrow: fold, never cut
    for row in rows:
        view.add_row(*(str(row[i]) for i in kept))
    return view


def _column_widths(columns: list[list[str]], width: int) -> list[int]:
    """Each column's width within `width`: as wide as its longest cell, the widest narrowed first,
    none below its longest word. (rich's own fitting narrows columns evenly, cutting numbers.)"""
    from rich.cells import cell_len

    least = [_longest_word(column) for column in columns]
    widths = [max(map(cell_len, column)) for column in columns]
    while _table_width(widths) > width:
        wide = [i for i, w in enumerate(widths) if w > least[i]]
        if not wide:
            break
        widths[max(wide, key=widths.__getitem__)] -= 1
    return widths


def _longest_word(cells: list[str]) -> int:
    from rich.cells import cell_len

    return max((cell_len(word) for cell in cells for word in cell.split()), default=1)


def _table_width(widths: list[int]) -> int:
    """A table's width with these column widths: rich's default box, one space of padding a side."""
    return 1 + sum(3 + w for w in widths)


def render_html(tables: dict[str, Table], images: list[Path], target: RankingMetric, runs: list[Run]) -> str:
    """One HTML page, with nothing outside it: how the results were made (date, row order, the
    settings every run shares, commands and environments), tables as <table>, PNGs as base64 data URIs."""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>optbench report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
             "</head><body>", "<h1>optbench report</h1>",
             f"<p>Made {html.escape(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))} from "
             f"{len(runs)} run(s). Rows of the runs table are ordered by best <code>{html.escape(target.name)}</code>, "
             f"{'highest' if target.maximize else 'lowest'} first ({'higher' if target.maximize else 'lower'} "
             f"is better); runs that did not complete come last, in folder order.</p>"]
    provenance = {"Settings shared by every run": shared_settings(runs), **provenance_tables(runs)}
    for title, (header, rows) in {**provenance, **tables}.items():
        if not rows:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
        parts.append("</table>")
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(image.stem)}</h2><img alt='{html.escape(image.stem)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# What a comparison holds fixed, when every run has the same value (config groups by option name).
SHARED_KEYS = ("model", "data", "optimizer", "scheduler", "trainer.max_steps", "trainer.epochs",
               "data.batch_size", "trainer.accumulation_steps", "trainer.precision", "trainer.device")


def shared_settings(runs: list[Run]) -> Table:
    """The settings in SHARED_KEYS, and the steps run, that every run has the same value of."""
    rows = []
    for key in SHARED_KEYS:
        values = {shown(run.value(key)) for run in runs}
        if len(values) == 1 and "" not in values and not (key == "trainer.epochs" and rows[-1][0] == "trainer.max_steps"):
            rows.append([key, values.pop()])  # (epochs do not count where max_steps is set)
    steps = {run.summary.get("steps") for run in runs}
    if len(steps) == 1 and None not in steps:
        rows.append(["steps run", steps.pop()])
    return ["setting", "value"], rows


def provenance_tables(runs: list[Run]) -> dict[str, Table]:
    """The commands that made the runs, and the software and machines they ran on, each distinct
    one once with how many runs it made (summary.json `provenance`; older runs have none)."""
    commands: dict[str, int] = {}
    environments: dict[tuple[str, ...], int] = {}
    for run in runs:
        record = run.summary.get("provenance")
        if not record:
            continue
        commands[record["command"]] = commands.get(record["command"], 0) + 1
        git = record.get("git")
        gpu = record.get("gpu")
        environment = (record.get("optbench") or "", record["torch"], record.get("cuda") or "none",
                       f"{git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}" if git else "not a repository",
                       record.get("host", ""), f"{record['cpu']['model']} x {record['cpu']['count']}",
                       f"{gpu['model']} x {gpu['count']}" if gpu else "none")
        environments[environment] = environments.get(environment, 0) + 1
    return {"Commands": (["command", "runs"], [[c, n] for c, n in commands.items()]),
            "Environment": (["optbench", "torch", "CUDA", "git commit", "host", "CPU", "GPU", "runs"],
                            [[*e, n] for e, n in environments.items()])}


def _mib(value: Any) -> float | None:
    return None if value is None else value / 2**20


def _fmt(value: Any, digits: int = 4) -> Any:
    """A number rounded for reading; blanks for missing values, `nan` kept visible."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, digits)
    return value
