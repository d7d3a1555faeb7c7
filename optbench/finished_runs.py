"""Finished runs read back from their folders: what `optbench report` and `optbench compare` work on.

A run folder is any folder holding Hydra's `.hydra/overrides.yaml`; single runs and the numbered
jobs of a multirun look the same. Runs are told apart by the overrides whose resolved values
differ between them (the "varied keys"); runs that differ only in their seed form one group.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench.errors import ConfigError
from optbench.run_folder import HYDRA, OVERRIDES, DamagedFile, RunFolder, read_json_lines
from optbench.schema import TrainerConfig

SEED_KEY = "trainer.seed"
LR_KEY = "optimizer.lr"
# Settings that change what a run shows or stores, never what it computes: they tell no runs apart.
NOT_COMPARED = {"trainer.progress", "trainer.tensorboard", "trainer.checkpoint_every", "trainer.resume",
                "trainer.mlflow", "trainer.mlflow_tracking_uri"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(repr=False)
    diagnostics: list[dict[str, Any]] = field(default_factory=list, repr=False)
    choices: dict[str, str] = field(default_factory=dict)  # config group -> the option it ran with

    @property
    def status(self) -> str:
        # No summary.json: the run was killed before it could write one, or is still running.
        return str(self.summary.get("status", "incomplete"))

    def config(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.summary.get("config", {})
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def value(self, key: str) -> Any:
        """The run's resolved value of an override key, so that runs compare by what they ran with,
        however (or whether) the command line spelled it: a config group's option (`optimizer` ->
        `adamw`, chosen or default), else the setting in the run's config, else the override as
        YAML types it (a run that wrote no summary); None where the run has no such setting."""
        if key in self.choices:
            return self.choices[key]
        setting = self.config(key)
        if setting is not None and not isinstance(setting, dict):
            return setting
        if key in self.overrides:
            return _typed(self.overrides[key])
        return setting

    def series(self, split: str, name: str) -> dict[int, float]:
        """step -> value of one metric; a null (non-finite) value as NaN."""
        return {line["step"]: _number(line.get(name)) for line in self.metrics
                if line.get("split") == split and name in line}

    def weight_norm(self) -> dict[int, float]:
        """step -> the 2-norm of all weights together, from the per-parameter norms of diagnostics.jsonl."""
        return {line["step"]: math.sqrt(sum(_number(v) ** 2 for v in line["weight_norm"].values()))
                for line in self.diagnostics if line.get("weight_norm")}


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def read_overrides(run_dir: Path) -> dict[str, str]:
    """key -> value of the overrides that made this run (`optimizer=sgd` has key `optimizer`)."""
    from omegaconf import OmegaConf

    path = RunFolder(run_dir).overrides
    lines = OmegaConf.to_container(_load_yaml(path))
    if not isinstance(lines, list):
        raise DamagedFile(f"{path}: damaged, not Hydra's list of overrides.")
    pairs = (str(line).lstrip("+~").split("=", 1) for line in lines)
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def _typed(text: str) -> Any:
    """An override's value typed as Hydra types it: `false` and `False` a bool, `1e-3` a number."""
    import yaml

    value = yaml.safe_load(text) if text else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def read_choices(run_dir: Path) -> dict[str, str]:
    """config group -> option, from Hydra's runtime.choices ({} for a folder without Hydra's files)."""
    from omegaconf import OmegaConf

    path = RunFolder(run_dir).hydra_settings
    if not path.exists():
        return {}
    choices = OmegaConf.select(_load_yaml(path), "hydra.runtime.choices", default={})
    return {str(k): str(v) for k, v in choices.items() if v is not None and not str(k).startswith("hydra/")}


def _load_yaml(path: Path) -> Any:
    """One of Hydra's YAML files of a run; DamagedFile when it cannot be read."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception as e:  # YAML's and OmegaConf's errors: the file was cut short or overwritten
        raise DamagedFile(f"{path}: damaged, not readable YAML ({' '.join(str(e).split())[:120]}).") from None


def load_run(run_dir: Path) -> Run:
    """The run in `run_dir`; DamagedFile when one of its files cannot be read back."""
    folder = RunFolder(run_dir)
    return Run(run_dir, read_overrides(run_dir), folder.read_summary(), _json_lines(folder.metrics),
               _json_lines(folder.diagnostics), read_choices(run_dir))


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a last line cut short (a killed run, a full disk, a run
    still writing it) is left out with a warning."""
    records, partial = read_json_lines(path)
    if partial is not None:
        print(f"optbench: warning: {path}: its last line is cut short, left out: {partial[:60]!r}", file=sys.stderr)
    return records


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run under `paths` (each a run folder or a folder above run folders), in path order."""
    found: dict[Path, None] = {}
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder.")
        for marker in sorted(path.rglob(f"{HYDRA}/{OVERRIDES}")):
            found[marker.parent.parent.resolve()] = None
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise ConfigError(f"{where}: no runs found (a run folder holds .hydra/overrides.yaml, "
                          f"as `optbench run` writes).")
    runs = []
    for path in sorted(found, key=_natural):
        try:
            runs.append(load_run(path))
        except DamagedFile as e:  # one damaged run costs the report nothing else
            print(f"optbench: warning: {e.problems[0]} The run {path} is left out.", file=sys.stderr)
    if not runs:
        raise ConfigError(f"{', '.join(str(p) for p in paths)}: no readable runs (see the warnings above).")
    return runs


def _natural(path: Path) -> list[Any]:
    """Sort key in which multirun job 10 comes after job 9."""
    return [int(part) if part.isdigit() else part for part in path.parts]


def varied_keys(runs: list[Run]) -> list[str]:
    """Override keys whose resolved value (`Run.value`) is not the same in every run, in the order
    they first appear; settings that cannot change a result (NOT_COMPARED) are left out."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides if k not in NOT_COMPARED))
    return [k for k in keys if len({json.dumps(run.value(k), sort_keys=True, default=str) for run in runs}) > 1]


def shown(value: Any) -> str:
    """A resolved value as a table cell or label part: blank when missing, `1e-05` not `1e-05.0`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def label(run: Run, keys: list[str]) -> str:
    """The run's group name: its values of `keys` (seed excluded, and keys that the run does not
    have, such as `optimizer.betas.0` of SGD), or `all` when there are none."""
    parts = [f"{k}={shown(run.value(k))}" for k in keys if k != SEED_KEY and run.value(k) is not None]
    return " ".join(parts) or "all"


def run_names(runs: list[Run]) -> list[str]:
    """A name for each run that no other run has: its folder below the folder that holds them all
    (`sweep_a/0` and `sweep_b/0`, not `0` twice)."""
    if len(runs) == 1:
        return [runs[0].path.name]
    common = Path(os.path.commonpath([run.path for run in runs]))
    return [run.path.relative_to(common).as_posix() for run in runs]


def group_runs(runs: list[Run], keys: list[str]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(label(run, keys), []).append(run)
    return groups


@dataclass(frozen=True)
class RankingMetric:
    """The metric that ranks runs: their `trainer.monitor` and `trainer.monitor_mode` (the trainer's
    defaults for runs whose config does not say)."""

    name: str
    maximize: bool

    @classmethod
    def of(cls, runs: list[Run]) -> RankingMetric:
        monitor = next((r.config("trainer.monitor") for r in runs if r.config("trainer.monitor")),
                       TrainerConfig.monitor)
        mode = next((r.config("trainer.monitor_mode") for r in runs if r.config("trainer.monitor_mode")),
                    TrainerConfig.monitor_mode)
        return cls(f"val/{monitor}", mode == "max")

    def best(self, run: Run) -> float:
        """The run's best value; NaN for a run that did not complete (it ranks last)."""
        if run.status != "completed":
            return math.nan
        return _number(run.summary.get("best", {}).get(self.name, run.summary.get("final", {}).get(self.name)))

    def final(self, run: Run) -> float:
        return _number(run.summary.get("final", {}).get(self.name))

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def reached(self, value: float, target: float) -> bool:
        return value >= target if self.maximize else value <= target
