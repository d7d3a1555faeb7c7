"""`optbench compare`: an equal-budget optimizer comparison.

    optbench compare optimizer=sgd,adamw,lion,lamb budget.trials=16 budget.seeds=3 [OVERRIDES...]

1. Search: every optimizer gets `budget.trials` trials at the same points of one scrambled
   Halton sequence (quasi-random: it covers the space more evenly than random draws), each
   point scaled into that optimizer's own search space, which its YAML declares under `_search`:

       _search:
         lr: {low: 1.0e-5, high: 1.0e-2, log: true}
         betas.0: {low: 0.8, high: 0.95}

   Keys are relative to `optimizer` (`betas.0` is the first beta, `inner.lr` a wrapped
   optimizer's LR); keys starting with `_` never reach the constructor (optbench.build).
2. Seeds: the best trial of each optimizer (by `trainer.monitor`, `trainer.monitor_mode`) runs
   again with `budget.seeds` new seeds, the numbers that the comparison reports.

Both stages are sweeps (`search/` and `seeds/` in the compare folder, each with `sweep.json`);
the same command with `hydra.sweep.dir=<compare folder>` runs only what has no result yet.
The folder ends with `compare.json`, `compare.csv` and the report of the seed runs (`report/`).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optbench.build import inner_components
from optbench.commands.common import (is_hydra_setting, override_key, reports_bad_input, timestamped_output,
                                     writable_folder)
from optbench.errors import ConfigError
from optbench.finished_runs import SEED_KEY, Run, RankingMetric, find_runs

BUDGET_DEFAULTS = {"trials": 16, "seeds": 3, "seed": 0}  # `seed` scrambles the Halton sequence
SEARCH_KEY = "_search"
PLAN = "compare.json"
SWEEP_DIR_KEY = "hydra.sweep.dir"


@dataclass(frozen=True)
class Dimension:
    """One searched key: `low`..`high`, uniform in log space when `log`."""

    key: str
    low: float
    high: float
    log: bool

    def scale(self, u: float) -> float:
        """The value at the fraction `u` in [0, 1) of the range."""
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)


def parse_budget(args: list[str]) -> tuple[dict[str, int], list[str]]:
    """`budget.KEY=N` arguments as numbers, and the other arguments."""
    budget, rest = dict(BUDGET_DEFAULTS), []
    for arg in args:
        if not arg.startswith("budget."):
            rest.append(arg)
            continue
        key, _, value = arg.removeprefix("budget.").partition("=")
        if key not in BUDGET_DEFAULTS:
            raise ConfigError(f"budget.{key}: no such budget setting. Allowed: "
                              f"{', '.join(f'budget.{k}' for k in BUDGET_DEFAULTS)}.")
        least = 0 if key == "seed" else 1
        try:
            number = int(value)
        except ValueError:
            number = least - 1
        if number < least:
            raise ConfigError(f"budget.{key}={value}: must be an integer >= {least}.")
        budget[key] = number
    return budget, rest


def search_space(name: str, node: DictConfig, prefix: str = "") -> list[Dimension]:
    """The dimensions that an optimizer's config declares, a wrapped optimizer's included."""
    where = f"optimizer={name}: {prefix}{SEARCH_KEY}"
    dims = []
    # A wrapped optimizer's dimensions first: its LR takes the first coordinate, like every LR.
    for key, inner in inner_components(node).items():
        dims += search_space(name, inner, f"{prefix}{key}.")
    for key, spec in (node.get(SEARCH_KEY) or {}).items():
        if OmegaConf.select(node, str(key), default=None) is None:
            raise ConfigError(f"{where}.{key}: the optimizer has no such setting to search.")
        try:
            low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", False))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}.{key}={spec}: must be {{low: NUMBER, high: NUMBER, log: BOOL}}.") from None
        if not low < high or (log and low <= 0):
            raise ConfigError(f"{where}.{key}: low={low:g}, high={high:g} must satisfy low < high"
                              f"{' and low > 0 (log: true)' if log else ''}.")
        dims.append(Dimension(f"{prefix}{key}", low, high, log))
    return dims


def halton(count: int, dims: int, seed: int) -> list[list[float]]:
    """The first `count` points of a scrambled Halton sequence in [0, 1)^dims."""
    from scipy.stats import qmc

    return qmc.Halton(d=max(dims, 1), scramble=True, rng=seed).random(count).tolist()


def trial_overrides(name: str, dims: list[Dimension], point: list[float]) -> list[str]:
    """A trial's own overrides: the optimizer and each searched value (4 significant digits)."""
    return [f"optimizer={name}", *(f"optimizer.{d.key}={d.scale(u):.4g}" for d, u in zip(dims, point))]


def plan_search(optimizers: list[str], common: list[str], budget: dict[str, int]) -> dict[str, Any]:
    """Every optimizer's space and trials, checked: each space must exist and its corners be valid."""
    from optbench.config import compose
    from optbench.validate import validate_config

    spaces = {}
    for name in optimizers:
        cfg = compose([*common, f"optimizer={name}"])
        spaces[name] = search_space(name, cfg.optimizer)
        if not spaces[name]:
            raise ConfigError(f"optimizer={name}: declares no search space ({SEARCH_KEY}: in its YAML, "
                              f"e.g. lr: {{low: 1.0e-4, high: 1.0e-1, log: true}}), so it cannot get a search budget.")
    given = {override_key(override) for override in common}
    problems = [f"{key}: searched by compare for optimizer={name} ({SEARCH_KEY}); remove it from the command."
                for name, dims in spaces.items() for key in (f"optimizer.{d.key}" for d in dims) if key in given]
    if problems:
        raise ConfigError(problems)
    points = halton(budget["trials"], max(len(dims) for dims in spaces.values()), budget["seed"])
    for name, dims in spaces.items():
        for corner in (0.0, 1.0 - 1e-12):  # the lowest and highest values a trial can get
            try:
                validate_config(compose([*common, *trial_overrides(name, dims, [corner] * len(dims))]))
            except ConfigError as e:
                problems += [f"optimizer={name} search space: {p}" for p in e.problems if p not in problems]
    if problems:
        raise ConfigError(problems)
    trials = {name: [trial_overrides(name, dims, point) for point in points] for name, dims in spaces.items()}
    return {"optimizers": optimizers, "budget": budget, "overrides": common, "points": points,
            "space": {name: [vars(d) for d in dims] for name, dims in spaces.items()}, "trials": trials}


@reports_bad_input
def main(args: list[str]) -> int:
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    budget, args = parse_budget(args)
    folder, launch, optimizers, common = split_arguments(args)
    plan = plan_search(optimizers, common, budget)
    open_folder(folder, plan)
    search_jobs = [trial for trials in plan["trials"].values() for trial in trials]
    status = run_sweep(folder, "search", search_jobs, common, launch)
    if status == 2 or stopped(folder / "search") or not recorded(folder / "search"):
        return status or 1
    winners = best_trials(find_runs([folder / "search"]), plan)
    base_seed = int(next((o.split("=", 1)[1] for o in common if o.startswith(f"{SEED_KEY}=")), 0))
    seeds = [base_seed + 1 + i for i in range(budget["seeds"])]  # new seeds: the search's own is spent
    seed_jobs = [[*trial, f"{SEED_KEY}={seed}"] for trial in winners.values() for seed in seeds]
    if seed_jobs:
        status = max(status, run_sweep(folder, "seeds", seed_jobs,
                                       [o for o in common if not o.startswith(f"{SEED_KEY}=")], launch))
    if stopped(folder / "seeds"):
        return status
    write_results(folder, plan, winners)
    return status


def split_arguments(args: list[str]) -> tuple[Path, list[str], list[str], list[str]]:
    """(compare folder, Hydra launcher settings, optimizers, the overrides every job gets)."""
    from optbench.config import sweep_choices

    folder = timestamped_output("compare")
    launch, optimizers, common = [], [], []
    for arg in args:
        if arg.startswith(f"{SWEEP_DIR_KEY}="):
            folder = Path(arg.split("=", 1)[1])
        elif is_hydra_setting(arg):
            launch.append(arg)
        elif arg.startswith("optimizer="):
            optimizers = [choice.split("=", 1)[1] for choice in sweep_choices([arg])[0]]
        elif arg.startswith("-"):
            raise ConfigError(f"{arg}: not an option of optbench compare (it takes overrides only).")
        else:
            common.append(arg)
    if not optimizers:
        raise ConfigError("optimizer: choose the optimizers to compare, e.g. optimizer=sgd,adamw,lion,lamb.")
    for override, choices in zip(common, sweep_choices(common)):
        if len(choices) > 1:
            raise ConfigError(f"{override}: compare sweeps only optimizer= (budget.trials searches each one, "
                              f"budget.seeds gives the seeds); give one value, or run one compare per value.")
    return folder, launch, optimizers, common


def open_folder(folder: Path, plan: dict[str, Any]) -> None:
    """Write the plan, or check that a folder being continued was made by the same plan."""
    writable_folder(SWEEP_DIR_KEY, folder)
    path = folder / PLAN
    if path.exists():
        earlier = json.loads(path.read_text())
        if {k: earlier.get(k) for k in plan} != json.loads(json.dumps(plan)):
            raise ConfigError(f"{SWEEP_DIR_KEY}={folder}: that folder holds a comparison with another plan "
                              f"(optimizers, budget or overrides); re-run exactly its command, or choose another folder.")
        return
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{SWEEP_DIR_KEY}={folder}: that folder holds something else; choose another folder.")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2) + "\n")


def run_sweep(folder: Path, stage: str, jobs: list[list[str]], common: list[str], launch: list[str],
              command: str = "compare") -> int:
    """One stage as an optbench sweep over an explicit list of jobs (Hydra sweeper `list`), in
    `folder/stage`; `command` names the caller in the line it prints (`reproduce` uses it too).

    An override that refines the optimizer (`optimizer@optimizer.inner=adamw`, `optimizer.eps=...`)
    goes with each job, after its `optimizer=NAME`: the sweep's own check composes the shared
    overrides without any job's optimizer, on which such a key may not exist."""
    from optbench.commands.run import run

    refines = [o for o in common if override_key(o).split("@")[-1].startswith("optimizer.")]
    jobs = [[*job, *refines] for job in jobs]
    common = [o for o in common if o not in refines]
    jobs_file = folder / f"{stage}_jobs.json"
    jobs_file.write_text(json.dumps(jobs, indent=1) + "\n")
    print(f"optbench {command}: {stage}: {len(jobs)} jobs in {folder / stage}", file=sys.stderr)
    return run(["-m", "hydra/sweeper=list", f"hydra.sweeper.jobs_file={jobs_file}",
                f"{SWEEP_DIR_KEY}={folder / stage}", *launch, *common], rerun_hint=False)


def stopped(sweep_dir: Path) -> bool:
    from optbench.sweep import read_index

    return bool(read_index(sweep_dir).get("stopped"))


def recorded(sweep_dir: Path) -> bool:
    """Whether any job of the stage ran (Hydra may fail before launching one)."""
    from optbench.sweep import read_index

    return bool(read_index(sweep_dir).get("jobs"))


def best_trials(runs: list[Run], plan: dict[str, Any]) -> dict[str, list[str]]:
    """optimizer -> the overrides of its best trial; an optimizer whose trials all failed has none.

    The search's jobs are the plan's trials in order, so job number = position in the plan.
    """
    target = RankingMetric.of(runs)
    by_job = {int(run.path.name): run for run in runs if run.path.name.isdigit()}
    winners: dict[str, list[str]] = {}
    job = 0
    for name, trials in plan["trials"].items():
        scored = []
        for trial in trials:
            value = target.best(by_job[job]) if job in by_job else math.nan
            if not math.isnan(value):
                scored.append((value, trial))
            job += 1
        if not scored:
            print(f"optbench compare: optimizer={name}: no trial completed; it gets no seed runs.", file=sys.stderr)
            continue
        pick = max if target.maximize else min
        winners[name] = pick(scored, key=lambda pair: pair[0])[1]
    return winners


def write_results(folder: Path, plan: dict[str, Any], winners: dict[str, list[str]]) -> None:
    """The comparison: per optimizer its trials' outcome, its best trial, and that trial over seeds;
    into compare.json (`results`), compare.csv, the terminal, and the report of the seed runs."""
    from rich.console import Console

    from optbench.commands.report import rich_table, write_csv, write_report

    search = find_runs([folder / "search"])
    target = RankingMetric.of(search)
    seed_runs = find_runs([folder / "seeds"]) if (folder / "seeds").is_dir() else []
    header = ["optimizer", "trials", "completed", "diverged", "failed", "best trial",
              f"search best {target.name}", "seeds", f"mean {target.name}", "std", "min", "max"]
    rows: list[list[Any]] = []
    for name in plan["optimizers"]:
        trials = [r for r in search if r.overrides.get("optimizer") == name]
        counts = {s: sum(r.status == s for r in trials) for s in ("completed", "diverged", "failed")}
        winner = winners.get(name, [])
        values = [target.best(r) for r in seed_runs if r.overrides.get("optimizer") == name]
        finite = [v for v in values if not math.isnan(v)]
        searched = [target.best(r) for r in trials if not math.isnan(target.best(r))]
        pick = max if target.maximize else min
        rows.append([name, len(trials), *counts.values(), " ".join(winner[1:]),
                     _round(pick(searched)) if searched else "", len(values),
                     _round(statistics.fmean(finite)) if finite else "",
                     _round(statistics.stdev(finite)) if len(finite) > 1 else "",
                     _round(min(finite)) if finite else "", _round(max(finite)) if finite else ""])
    plan_path = folder / PLAN
    stored = json.loads(plan_path.read_text())
    stored["results"] = [dict(zip(header, row)) for row in rows]
    plan_path.write_text(json.dumps(stored, indent=2) + "\n")
    write_csv((header, rows), folder / "compare.csv")
    console = Console()
    console.print(rich_table(f"Equal-budget comparison ({plan['budget']['trials']} trials each, "
                             f"best trial over {plan['budget']['seeds']} seeds)", (header, rows), console))
    if seed_runs:
        (folder / "report").mkdir(exist_ok=True)
        for path in write_report(seed_runs, folder / "report"):
            print(f"wrote {path}")
    print(f"wrote {folder / 'compare.csv'}")
    print(f"optbench compare: the same command with {SWEEP_DIR_KEY}={folder} re-runs only what has no "
          f"result yet.", file=sys.stderr)


def _round(value: float) -> float:
    return round(value, 4)
