"""What a run writes besides checkpoints: metrics.jsonl, TensorBoard scalars and summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optbench.run_folder import RunFolder, json_safe

# metrics.jsonl names of train metrics -> their TensorBoard tags (others go to <split>/<name>).
TRAIN_TAGS = {
    "grad_norm": "grad_norm/pre_clip",
    "grad_norm_post_clip": "grad_norm/post_clip",
    "samples_per_s": "throughput/samples_per_s",
}

# Train metrics logged per parameter group: `name` for the first group, `name/<group>` for others.
GROUP_METRICS = ("lr", "momentum")


class MetricsLog:
    """Appends metric lines to `metrics.jsonl` and mirrors them as TensorBoard scalars.

    `first_group` is the name of the first parameter group: its LR (and cycled momentum) is
    logged as `lr` (`momentum`) in metrics.jsonl (the contract) and as `lr/<name>`
    (`momentum/<name>`) in TensorBoard, like every other group's.
    """

    def __init__(self, folder: RunFolder, first_group: str, tensorboard: bool, resume_step: int | None = None,
                 active: bool = True):
        self.first_group = first_group
        self.path = folder.metrics
        self.diagnostics_path = folder.diagnostics
        self.active = active  # false on the ranks other than 0: they write nothing
        self._writer = None
        if not active:
            return
        if resume_step is not None:
            for path in (self.path, self.diagnostics_path):
                _truncate_after(path, resume_step)
        self._file = self.path.open("a")
        self._diagnostics_file = self.diagnostics_path.open("a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(folder.tensorboard), purge_step=resume_step)

    def write(self, split: str, step: int, epoch: float, time: float, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        line = {"step": step, "epoch": round(epoch, 6), "time": round(time, 4), "split": split, **metrics}
        self._file.write(json.dumps(json_safe(line)) + "\n")
        self._file.flush()
        if self._writer is None:
            return
        for name, value in metrics.items():
            self._writer.add_scalar(self._tag(split, name), value, step)

    def write_diagnostics(self, step: int, record: dict[str, dict[str, float]]) -> None:
        """One line of diagnostics.jsonl; TensorBoard tags `diag/<kind>/<name>`."""
        if not self.active:
            return
        self._diagnostics_file.write(json.dumps(json_safe({"step": step, **record})) + "\n")
        self._diagnostics_file.flush()
        if self._writer is None:
            return
        for kind, values in record.items():
            for name, value in values.items():
                self._writer.add_scalar(f"diag/{kind}/{name}", value, step)

    def _tag(self, split: str, name: str) -> str:
        if split != "train":
            return f"{split}/{name}"
        if name in GROUP_METRICS:
            return f"{name}/{self.first_group}"
        if name.split("/")[0] in GROUP_METRICS:
            return name
        return TRAIN_TAGS.get(name, f"train/{name}")

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        self._diagnostics_file.close()
        if self._writer is not None:
            self._writer.close()


def _truncate_after(path: Path, step: int) -> None:
    """Drop lines that an interrupted run wrote after the checkpoint it resumes from."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(f"{line}\n" for line in kept))


def per_group(name: str, values: list[float], groups: list[dict[str, Any]]) -> dict[str, float]:
    """One value per parameter group as train metrics: `name` for the first, `name/<group>` after."""
    metrics = {}
    for i, (group, value) in enumerate(zip(groups, values)):
        metrics[name if i == 0 else f"{name}/{group.get('name', f'group{i}')}"] = value
    return metrics
