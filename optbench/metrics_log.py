"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard scalars (and HParams session),
MLflow metrics when asked, and summary.json."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from optbench.event_file import EventFile
from optbench.hparams import HParamsSession, RunIdentity, metric_values
from optbench.mlflow_log import MlflowRun
from optbench.run_folder import RunFolder, json_text, read_json_lines, temporary_beside, writing

log = logging.getLogger("optbench")

# metrics.jsonl names of train metrics -> their TensorBoard tags (others go to <split>/<name>).
TRAIN_TAGS = {
    "grad_norm": "grad_norm/pre_clip",
    "grad_norm_post_clip": "grad_norm/post_clip",
    "samples_per_s": "throughput/samples_per_s",
}

# Train metrics logged per parameter group: `name` for the first group, `name/<group>` for others.
GROUP_METRICS = ("lr", "momentum")

# Train lines are flushed when this long has passed since the last flush; the first train line,
# validation lines, every checkpoint and the run's end flush at once. A flush is a system call per
# file: flushing metrics.jsonl and the event file at every train line took 70-90 us of a line's
# ~450 (an MLP's step is ~2 ms). TensorBoard's own writer flushes every 120 s. A run killed
# outright loses at most this long a stretch of its newest train lines; a resumed run drops the
# lines after its checkpoint anyway.
FLUSH_INTERVAL_S = 1.0


class MetricsLog:
    """Appends metric lines to `metrics.jsonl` and mirrors them as TensorBoard scalars in
    `tb/<identity.name>` (and as MLflow metrics of the same names, given an `mlflow` run).

    `first_group` is the name of the first parameter group: its LR (and cycled momentum) is
    logged as `lr` (`momentum`) in metrics.jsonl (the contract) and as `lr/<name>`
    (`momentum/<name>`) in TensorBoard, like every other group's.
    """

    def __init__(self, folder: RunFolder, first_group: str, tensorboard: bool, identity: RunIdentity,
                 resume_step: int | None = None, active: bool = True, mlflow: MlflowRun | None = None):
        self.first_group = first_group
        self.path = folder.metrics
        self.diagnostics_path = folder.diagnostics
        self.active = active  # false on the ranks other than 0: they write nothing
        self._writer = None
        self._session: HParamsSession | None = None
        self.mlflow = mlflow
        if not active:
            return
        if resume_step is not None:
            for path in (self.path, self.diagnostics_path):
                _truncate_after(path, resume_step)
        self._file = self.path.open("a")
        self._diagnostics_file = self.diagnostics_path.open("a")
        if tensorboard:
            tb_dir = folder.tensorboard / identity.name
            self._writer = EventFile(tb_dir, purge_step=resume_step)
            self._session = HParamsSession(tb_dir, identity.hparams)
        self._flushed_at = -math.inf  # the first train line goes to disk at once: the run shows it started

    def write(self, split: str, step: int, epoch: float, elapsed: float, metrics: dict[str, float]) -> None:
        """One line of metrics.jsonl (`elapsed`: seconds since the run started, its `time`)."""
        if not self.active:
            return
        line = {"step": step, "epoch": round(epoch, 6), "time": round(elapsed, 4), "split": split, **metrics}
        with writing(self.path):
            self._file.write(json_text(line) + "\n")
        self._scalars({self._tag(split, name): value for name, value in metrics.items()}, step)
        if split != "train":  # rare, and read as soon as it comes
            self.flush()
        else:
            self._flush_if_due()

    def write_diagnostics(self, step: int, record: dict[str, dict[str, float]]) -> None:
        """One line of diagnostics.jsonl; TensorBoard tags `diag/<kind>/<name>`."""
        if not self.active:
            return
        with writing(self.diagnostics_path):
            self._diagnostics_file.write(json_text({"step": step, **record}) + "\n")
        self._scalars({f"diag/{kind}/{name}": value for kind, values in record.items()
                       for name, value in values.items()}, step)
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Put every line written so far on disk (the trainer calls it before each checkpoint, so
        that the files hold every line up to the step a resumed run continues from)."""
        if not self.active:
            return
        for path, file in ((self.path, self._file), (self.diagnostics_path, self._diagnostics_file)):
            with writing(path):
                file.flush()
        if self._writer is not None:
            with writing(self._writer.path):
                self._writer.flush()
        self._flushed_at = time.monotonic()

    def _scalars(self, scalars: dict[str, float], step: int) -> None:
        """The same scalars to every tracker: TensorBoard, and MLflow when the run logs there."""
        if self._writer is not None:
            with writing(self._writer.path):
                self._writer.add_scalars(scalars, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step)

    def _tag(self, split: str, name: str) -> str:
        if split != "train":
            return f"{split}/{name}"
        if name in GROUP_METRICS:
            return f"{name}/{self.first_group}"
        if name.split("/")[0] in GROUP_METRICS:
            return name
        return TRAIN_TAGS.get(name, f"train/{name}")

    def close(self, summary: dict[str, Any]) -> None:
        """End the run's records with its `summary` (its status, steps, final and best metrics)."""
        if not self.active:
            return
        self._file.close()
        self._diagnostics_file.close()
        status, step, metrics = summary["status"], int(summary.get("steps", 0)), metric_values(summary)
        if self._writer is not None:
            with writing(self._writer.path):
                self._writer.close()
        if self._session is not None:
            self._session.write(status, metrics, step)
        if self.mlflow is not None:
            self.mlflow.end(status, metrics, step)


def _truncate_after(path: Path, step: int) -> None:
    """Drop lines that an interrupted run wrote after the checkpoint it resumes from, and a last
    line that a crash or a full disk cut short (the log says so). Rewritten atomically: a failure
    here leaves the file as it was."""
    if not path.exists():
        return
    records, partial = read_json_lines(path)
    if partial is not None:
        log.warning("%s: dropped its last line, cut short by an earlier crash or full disk: %r", path, partial[:80])
    with temporary_beside(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
        os.replace(tmp, path)


def per_group(name: str, values: list[float], groups: list[dict[str, Any]]) -> dict[str, float]:
    """One value per parameter group as train metrics: `name` for the first, `name/<group>` after."""
    metrics = {}
    for i, (group, value) in enumerate(zip(groups, values)):
        metrics[name if i == 0 else f"{name}/{group.get('name', f'group{i}')}"] = value
    return metrics
