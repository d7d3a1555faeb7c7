"""`optbench report PATH...`: finished runs side by side.

Writes, into one folder: `report.csv` (one row a run), `curves.png` (train loss, validation
metric, LR and gradient norm per group, mean and min-max band over seeds, and the weight norm
where runs wrote diagnostics), `lr_sensitivity.png` (where `optimizer.lr` varies),
`performance_profiles.png` (where runs of several workloads are present), and `report.html`,
which holds the same tables and the PNGs inline so that it can be sent as one file.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optbench.commands.common import reports_bad_input
from optbench.profiles import TAU_MAX, Profiles, performance_profiles
from optbench.finished_runs import LR_KEY, SEED_KEY, Run, RankingMetric, find_runs, group_runs, label, varied_keys

# An LR counts as "as good as the best" when its metric is within this fraction of the best one.
ROBUST_TOLERANCE = 0.05
# Paired comparisons whose p-value is below this say which optimizer is better.
SIGNIFICANCE = 0.05

Table = tuple[list[str], list[list[Any]]]

# Override keys that choose the workload rather than the optimizer (their first dotted part).
WORKLOAD_KEYS = {"model", "data", "recipe", "smoke"}


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="optbench report",
        description="Compare finished runs (single runs or multirun folders): a table, report.csv, "
        "PNG plots and a self-contained report.html.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or folders above them")
    parser.add_argument("--out", type=Path, help="output folder (default: FIRST_PATH/report)")
    parser.add_argument("--target", type=float, help="metric value whose first reach is reported "
                        "as steps and time to target")
    return parser.parse_args(args)


@reports_bad_input
def main(args: list[str]) -> int:
    options = parse_args(args)
    runs = find_runs(options.paths)
    out = options.out or options.paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = write_report(runs, out, options.target)
    for path in written:
        print(f"wrote {path}")
    return 0


def write_report(runs: list[Run], out: Path, target_value: float | None = None) -> list[Path]:
    """Every output of the report for `runs` into `out`; the paths written."""
    from rich.console import Console

    from optbench.commands.report_plots import draw_curves, draw_profiles, draw_sensitivity

    keys = varied_keys(runs)
    target = RankingMetric.of(runs)
    tables = {"Runs": run_table(runs, keys, target, target_value)}
    sensitivity = lr_sensitivity(runs, keys, target)
    if sensitivity:
        tables["LR sensitivity"] = sensitivity_table(sensitivity, target)
    # With LR swept, each optimizer is compared at its own best LR: comparing every LR of one
    # with every LR of another answers a question nobody asked.
    compared = at_best_lr(runs, sensitivity, target) if sensitivity else runs
    comparisons = paired_comparisons(compared, [k for k in keys if not sensitivity or k != LR_KEY], target)
    if comparisons[1]:
        tables["Paired comparisons over seeds"] = comparisons
    # Optimizers are compared across workloads: keys that choose the workload do not split them.
    solver_keys = [k for k in keys if k.split(".")[0] not in WORKLOAD_KEYS]
    profiles = performance_profiles(group_runs(runs, solver_keys))
    if profiles is not None:
        tables["Performance profiles (time to target)"] = profile_table(profiles)

    csv_path = out / "report.csv"
    write_csv(tables["Runs"], csv_path)
    figures = {"curves.png": draw_curves(group_runs(runs, keys), target)}
    if sensitivity:
        figures["lr_sensitivity.png"] = draw_sensitivity(sensitivity, target)
    if profiles is not None:
        figures["performance_profiles.png"] = draw_profiles(profiles)
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=120)

    console = Console()
    for title, table in tables.items():
        console.print(rich_table(title, table))
    html_path = out / "report.html"
    html_path.write_text(render_html(tables, [out / name for name in figures], target))
    return [csv_path, *(out / name for name in figures), html_path]


def run_table(runs: list[Run], keys: list[str], target: RankingMetric, target_value: float | None) -> Table:
    """One row a run: status, the varied overrides, the target metric, speed and memory."""
    header = ["run", "status", *keys, "steps", f"final {target.name}", f"best {target.name}",
              "final train/loss", "wall time (s)", "samples/s", "optimizer state (MiB)", "peak memory (MiB)"]
    if target_value is not None:
        header += ["steps to target", "time to target (s)"]
    rows = []
    for run in runs:
        s = run.summary
        row = [run.path.name, run.status, *(run.overrides.get(k, "") for k in keys), s.get("steps", ""),
               _fmt(target.final(run)), _fmt(target.best(run)), _fmt(s.get("final", {}).get("train/loss")),
               _fmt(s.get("wall_time_s"), 2), _fmt(s.get("samples_per_s"), 1),
               _fmt(_mib(s.get("optimizer_state_bytes")), 3), _fmt(_mib((s.get("peak_memory") or {}).get("bytes")), 3)]
        if target_value is not None:
            row += list(time_to_target(run, target, target_value))
        rows.append(row)
    return header, rows


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
    """One curve per group of the other varied keys (typically per optimizer), when LR varies."""
    if LR_KEY not in keys:
        return []
    others = [k for k in keys if k != LR_KEY]
    result = []
    for group, members in group_runs(runs, others).items():
        by_lr: dict[float, list[float]] = {}
        for run in members:
            by_lr.setdefault(float(run.overrides[LR_KEY]), []).append(target.best(run))
        lrs = sorted(by_lr)
        # A diverged seed makes the LR a failure: a mean that hides it would flatter the LR.
        values = [math.nan if any(math.isnan(v) for v in by_lr[lr]) else statistics.fmean(by_lr[lr]) for lr in lrs]
        result.append(Sensitivity(group, lrs, values))
    return result


def at_best_lr(runs: list[Run], curves: list[Sensitivity], target: RankingMetric) -> list[Run]:
    """The runs of each sensitivity group at that group's best LR."""
    keys = [k for k in varied_keys(runs) if k not in (LR_KEY, SEED_KEY)]
    best = {curve.group: curve.best_lr(target.maximize) for curve in curves}
    return [run for run in runs if float(run.overrides[LR_KEY]) == best[label(run, keys)]]


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
    """Every two groups compared on the seeds both ran (paired t-test of their best metric)."""
    from scipy.stats import ttest_rel

    header = ["A", "B", "seeds", "mean A-B", "p-value", "verdict"]
    rows: list[list[Any]] = []
    if SEED_KEY not in keys:
        return header, rows
    groups = {name: {r.overrides.get(SEED_KEY): target.best(r) for r in members}
              for name, members in group_runs(runs, keys).items()}
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = [s for s in groups[a] if s in groups[b]
                     and not math.isnan(groups[a][s]) and not math.isnan(groups[b][s])]
            if len(seeds) < 2:
                continue
            diffs = [groups[a][s] - groups[b][s] for s in seeds]
            mean = statistics.fmean(diffs)
            # Identical results on every seed give the t-test nothing to divide by.
            p = 1.0 if all(d == diffs[0] for d in diffs) and mean == 0 else float(
                ttest_rel([groups[a][s] for s in seeds], [groups[b][s] for s in seeds]).pvalue)
            if math.isnan(p) or p >= SIGNIFICANCE:
                verdict = "not distinguishable"
            else:
                verdict = f"{a if target.better(mean, 0.0) else b} better"
            rows.append([a, b, len(seeds), _fmt(mean), _fmt(p, 3), verdict])
    return header, rows


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


def rich_table(title: str, table: Table) -> Any:
    from rich.table import Table as RichTable

    header, rows = table
    view = RichTable(title=title)
    for name in header:
        view.add_column(name)
    for row in rows:
        view.add_row(*(str(v) for v in row))
    return view


def render_html(tables: dict[str, Table], images: list[Path], target: RankingMetric) -> str:
    """One HTML page, with nothing outside it: tables as <table>, PNGs as base64 data URIs."""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>optbench report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>",
             "</head><body>", "<h1>optbench report</h1>",
             f"<p>Runs are ranked by <code>{html.escape(target.name)}</code> "
             f"({'higher' if target.maximize else 'lower'} is better).</p>"]
    for title, (header, rows) in tables.items():
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


def _mib(value: Any) -> float | None:
    return None if value is None else value / 2**20


def _fmt(value: Any, digits: int = 4) -> Any:
    """A number rounded for reading; blanks for missing values, `nan` kept visible."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, digits)
    return value
