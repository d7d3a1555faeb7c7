"""TensorBoard's HParams view: each run's hyperparameters, status, final and best metrics.

Every run writes its session into its TensorBoard folder when it starts (status `running`) and
again when it ends (`completed`, `diverged`, `failed` or `interrupted`, with `final/<name>` and
`best/<name>` scalars), so that `tensorboard --logdir` shows every run, finished or not, as one
row of the HParams table. The session lives in a file of its own (`SESSION_FILE`), rewritten
whole at the end: TensorBoard keeps the first record of a tag it reads in a run, so a second
record appended to the same run would never be seen.

No experiment record is written: TensorBoard then makes the table's columns from the union of
the hyperparameters of all the runs under `--logdir` (a single run and a sweep keep all theirs),
where one run's experiment record would have fixed them for all.

A run's TensorBoard folder is `tb/<name>`, its name the overrides that make it what it is (for a
sweep's job, those the sweep varies), so that TensorBoard lists `3/tb/optimizer.lr=0.01`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optbench.commands.common import override_key, task_overrides
from optbench.finished_runs import NOT_COMPARED
from optbench.run_folder import temporary_beside

# Always shown: what an optimizer study compares first (when the config has them).
STANDARD = ("optimizer.lr", "optimizer.weight_decay", "data.batch_size")


def hparam_values(cfg: DictConfig, overrides: list[str], optimizer_name: str | None) -> dict[str, Any]:
    """Hyperparameters of a run: `optimizer` (the option's name), the standard keys, then the
    overrides given (in a sweep, those that vary), numbers as numbers."""
    values: dict[str, Any] = {}
    if optimizer_name is not None:
        values["optimizer"] = optimizer_name
    for key in STANDARD:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = value
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        values[key] = _number_or_text(value)
    return values


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def metric_values(summary: dict[str, Any]) -> dict[str, float]:
    """`final/<name>` and `best/<name>` of every number in the summary (NaN for a null)."""
    metrics = {}
    for kind in ("final", "best"):
        for name, value in summary.get(kind, {}).items():
            metrics[f"{kind}/{name}"] = math.nan if value is None else float(value)
    return metrics


# The session sorts after the scalars' event files (named by their start time), so that a
# TensorBoard watching the folder reads it last; 'tfevents' in the name makes it an event file.
SESSION_FILE = "events.out.tfevents.9999999999.session"
# optbench's statuses -> the HParams plugin's (its status filter; the `status` column says which):
# a diverged run did not succeed; an interrupted one has no end yet (it resumes), and the plugin
# has no status for a run that is stopped but unfinished.
TB_STATUS = {"running": "STATUS_RUNNING", "completed": "STATUS_SUCCESS", "diverged": "STATUS_FAILURE",
             "failed": "STATUS_FAILURE", "interrupted": "STATUS_UNKNOWN"}
NAME_LIMIT = 200  # characters of a run's folder name (file systems allow 255 bytes)


@dataclass(frozen=True)
class RunIdentity:
    """What TensorBoard and MLflow call a run (`name`) and the hyperparameters it is shown with."""

    name: str
    hparams: dict[str, Any]


def job_identity(cfg: DictConfig) -> RunIdentity:
    """The identity of the Hydra job running now: its overrides, less Hydra's own, those that only
    change what a run shows or stores (`trainer.resume`, ...), and, in a sweep, the keys that the
    sweep gives one value. Outside a Hydra job (a Trainer built in Python): `run`, the standard keys."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunIdentity("run", hparam_values(cfg, [], None))
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in task_overrides([str(o) for o in hydra_cfg.overrides.task])
                 if override_key(o) not in NOT_COMPARED]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        from optbench.sweep import constant_keys, read_index

        constant = constant_keys(read_index(Path(str(hydra_cfg.sweep.dir))).get("overrides", []))
        overrides = [o for o in overrides if override_key(o) not in constant]
    return RunIdentity(run_name(overrides), hparam_values(cfg, overrides, hydra_cfg.runtime.choices.get("optimizer")))


def run_name(overrides: list[str]) -> str:
    """`key=value,key=value` of the overrides (`defaults` for none), usable as a folder name."""
    name = ",".join(o.lstrip("+~") for o in overrides).replace(os.sep, "_") or "defaults"
    return name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT - 3] + "..."


class HParamsSession:
    """A run's row in the HParams table: written at the start, rewritten at the end."""

    def __init__(self, tb_dir: Path, hparams: dict[str, Any]):
        self.path, self.hparams = tb_dir / SESSION_FILE, hparams
        self.started = time.time()
        self.write("running", {}, step=0)

    def write(self, status: str, metrics: dict[str, float], step: int) -> None:
        """The session with `status` and the `final/`, `best/` scalars, atomically."""
        from tensorboard.compat.proto.event_pb2 import Event

        from optbench.event_file import FILE_VERSION, record, scalar_event, write_events

        now = time.time()
        events = [Event(wall_time=now, file_version=FILE_VERSION),
                  Event(wall_time=now, step=step, summary=self._session_summary(status, now))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with temporary_beside(self.path) as tmp:
            with tmp.open("wb") as f:
                write_events(f, events)
                f.write(b"".join(record(scalar_event(now, step, {name: value})) for name, value in metrics.items()))
            os.replace(tmp, self.path)

    def _session_summary(self, status: str, now: float) -> Any:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        start = plugin_data_pb2.SessionStartInfo(start_time_secs=self.started)
        for key, value in {**self.hparams, "status": status}.items():
            if isinstance(value, bool):
                start.hparams[key].bool_value = value
            elif isinstance(value, (int, float)):
                start.hparams[key].number_value = value
            else:
                start.hparams[key].string_value = str(value)
        values = [Summary.Value(tag=metadata.SESSION_START_INFO_TAG, metadata=metadata.create_summary_metadata(
            plugin_data_pb2.HParamsPluginData(session_start_info=start)))]
        # Running too: the plugin's status filter has a box for it.
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value(TB_STATUS[status]),
                                             end_time_secs=0 if status == "running" else now)
        values.append(Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(
            plugin_data_pb2.HParamsPluginData(session_end_info=end))))
        return Summary(value=values)
