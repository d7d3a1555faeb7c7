"""A claim of the chapter, the experiment that checks it, and the verdict.

Each claim module (`optbench/commands/reproduce/<theme>.py`) declares `Claim`s: the chapter's
statement, the rule that decides it (written next to it: seeds, statistic, threshold) and a
`check` that runs the experiment through the ordinary commands and returns an `Outcome`. The
`Context` a check receives is its only way to run things: every training run is a job of an
optbench sweep in the claim's folder (so `optbench report` works on it, and a re-run skips what
finished), every other command (`toy`, `schedules`, `lr-find`, `bench`) writes into a folder of
its own that a re-run keeps.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.finished_runs import Run

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
PROXY_ONLY = "proxy only"  # reproduced at CPU scale on a stand-in workload (named in `workload`)
OUT_OF_REACH = "out of reach"  # needs data or hardware this machine lacks (`full_scale` names the command)
VERDICTS = (REPRODUCED, NOT_REPRODUCED, PROXY_ONLY, OUT_OF_REACH)
SCALES = ("smoke", "proxy", "full")  # smoke: seconds per claim, for the test suite; proxy: the default
CIFAR10_TARGET = 0.93  # configs/data/cifar10.yaml's target: steps to it measure speed on CIFAR-10 (scale=full)
OUTCOME = "outcome.json"  # a claim's record in its folder: the claim is done
DONE = ".done"  # written into a command's folder when it finished: a re-run keeps that folder

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """What a claim's experiment found.

    `verdict`: one of VERDICTS. `seen`: one or two sentences with the numbers behind the verdict
    (for `not reproduced`, what was seen instead). `workload`: what ran (model, data, steps,
    seeds), the stand-in named for `proxy only`. `figures`: the numbers, by name, for claims.json.
    `full_scale`: the command that checks the claim at the chapter's own scale, where this run
    is a proxy or out of reach."""

    verdict: str
    seen: str
    workload: str
    figures: dict[str, Any] = field(default_factory=dict)
    full_scale: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: one of {', '.join(VERDICTS)}")


@dataclass(frozen=True)
class Claim:
    """One measurable claim of the chapter and how it is checked."""

    number: int
    name: str  # what the command line calls it: `optbench reproduce momentum`
    section: str  # of the chapter: "2.1-2.3", "Exercise 1"
    statement: str  # what the chapter says, in its words where it has a number
    rule: str  # what counts as reproduced: the seeds, the statistic, the threshold
    check: Callable[[Context], Outcome] = field(repr=False)

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "check"}


def claim_folder(out: Path, claim: Claim) -> Path:
    """Where a claim's sweeps, outputs, figures and `outcome.json` go."""
    return out / f"{claim.number:02d}_{claim.name}"


def verdict(held: bool, proxy: bool) -> str:
    """The verdict of a rule that `held` (or not) on a stand-in workload (`proxy`) or on the
    claim's own terms."""
    if not held:
        return NOT_REPRODUCED
    return PROXY_ONLY if proxy else REPRODUCED


def out_of_reach(missing: str, workload: str, full_scale: str) -> Outcome:
    """The verdict of a claim whose full-scale experiment cannot run here, and why (`Context.missing`)."""
    return Outcome(OUT_OF_REACH, f"The chapter's experiment cannot run here: {missing}.", workload,
                   full_scale=full_scale)


def listed(values: Sequence[Any], digits: int = 3) -> str:
    """Per-seed values for a `seen` sentence: floats to `digits` significant digits, NaN and None
    (a run that did not complete) as n/a."""
    return ", ".join("n/a" if v is None or isinstance(v, float) and math.isnan(v)
                     else f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def by_optimizer(runs: Sequence[Run], names: Sequence[str]) -> dict[str, list[Run]]:
    """Each optimizer option's runs, in seed order (the order a paired test pairs them in)."""
    return {name: sorted((r for r in runs if r.value("optimizer") == name), key=lambda r: r.value("trainer.seed"))
            for name in names}


def has_gpu() -> bool:
    """Whether this machine has a CUDA GPU: the chapter's CIFAR-10 and ImageNet runs take days on a CPU."""
    import torch

    return torch.cuda.is_available()


class Context:
    """What a claim's check may use: the scale, its folder, the ordinary commands, and what the
    command line passes on: `data.root` (where the chapter's data sets are) and `trainer.*`
    overrides for every training run."""

    def __init__(self, scale: str, folder: Path, data_root: str | None = None, passed: Sequence[str] = ()) -> None:
        self.scale = scale
        self.folder = folder
        self.data_root = data_root  # CIFAR-10 in it, ImageNet in <it>/imagenet; None: the configs' defaults
        self.passed = list(passed)  # trainer.* overrides, last in every sweep's shared overrides
        self.images: list[Path] = []  # figures the claim drew, for claims.md
        self.run_folders: list[Path] = []  # sweeps and command folders, for claims.json

    def beside(self, claim: Claim) -> Context:
        """A context for `claim`'s folder, to share runs with it (two claims judged on one sweep)."""
        return Context(self.scale, claim_folder(self.folder.parent, claim), self.data_root, self.passed)

    def on_data(self, recipe: str, data: str | None = "cifar10") -> list[str]:
        """The overrides that run `recipe` on the chapter's data set `data` (cifar10 or imagenet)
        where this command's `data.root` says it is; `data=None`: data that ship with optbench."""
        if self.data_root is None or data is None:
            return [f"recipe={recipe}"]
        return [f"recipe={recipe}", f"data.root={Path(self.data_root) / ('imagenet' if data == 'imagenet' else '')}"]

    def missing(self, recipe: str, data: str | None = "cifar10", gpu: bool = True) -> str | None:
        """Why `recipe` cannot run here at its own settings (its data set is not where `data.root`
        points, no CUDA GPU), in words; None when it can. The data are checked by building them
        as the run's pre-flight does."""
        from optbench.config import job_config
        from optbench.errors import ConfigError

        reasons = [] if not gpu or has_gpu() else [
            "no CUDA GPU here (the chapter runs these on GPUs: days on a CPU, or bitsandbytes without its CUDA "
            "kernels)"]
        try:
            job_config([*self.on_data(recipe, data), *self.passed])
        except ConfigError as e:
            reasons += e.problems
        return "; ".join(reason.rstrip(".") for reason in reasons) or None

    def pick(self, smoke: T, proxy: T, full: T | None = None) -> T:
        """The value for this scale (`full` defaults to `proxy`'s)."""
        if self.scale == "smoke":
            return smoke
        if self.scale == "full" and full is not None:
            return full
        return proxy

    def sweep(self, name: str, jobs: Sequence[Sequence[str]], common: Sequence[str] = ()) -> list[Run]:
        """Run `jobs` (each a list of overrides, added to `common`) as one optbench sweep in
        `<claim folder>/<name>` and return its runs, in job order. A re-run of the claim skips
        the jobs that finished and resumes interrupted ones (the sweep's own `sweep.json`)."""
        from optbench.commands.compare import run_sweep
        from optbench.finished_runs import find_runs

        sweep_dir = self.folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run_folders.append(sweep_dir)
        status = run_sweep(self.folder, name, [list(job) for job in jobs], [*common, *self.passed], [],
                           command="reproduce")
        if status != 0:
            raise ClaimFailed(f"the sweep {sweep_dir} ended with exit status {status}; "
                              f"its jobs' folders say why (.hydra/, summary.json).")
        runs = find_runs([sweep_dir])
        return sorted(runs, key=lambda run: int(run.path.name) if run.path.name.isdigit() else 0)

    def command(self, name: str, main: Callable[[list[str]], int], args: Sequence[str]) -> Path:
        """Run an optbench command's `main` (toy, schedules, lr-find, bench, ...) with `--out`
        `<claim folder>/<name>`; return that folder. A folder from an earlier, finished call is
        kept and the command not run again."""
        out = self.folder / name
        self.run_folders.append(out)
        if (out / DONE).exists():
            return out
        status = main([*args, "--out", str(out)])
        if status != 0:
            raise ClaimFailed(f"`{name}` ({' '.join(args)}) ended with exit status {status}.")
        (out / DONE).write_text("")
        return out

    def cached(self, name: str, compute: Callable[[], T]) -> T:
        """`compute()`'s JSON-serialisable result, stored as `<claim folder>/<name>.json`: for a
        measurement that is not a run or a command (a parity check, a state count), so that a
        re-run reads it back instead of measuring again."""
        path = self.folder / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        value = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=1) + "\n")
        return value

    def save_figure(self, figure: Figure, name: str) -> Path:
        """Save a matplotlib figure as `<claim folder>/<name>.png` and list it in claims.md."""
        import matplotlib.pyplot as plt

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        self.images.append(path)
        return path

    def say(self, text: str) -> None:
        print(f"optbench reproduce: {text}", file=sys.stderr)


class ClaimFailed(RuntimeError):
    """A claim's experiment could not run to the end (a command failed): no verdict."""

