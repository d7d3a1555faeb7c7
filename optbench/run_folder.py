"""The run folder: the one place that knows its file names, and how each file is written.

Every module that reads or writes a run's files goes through `RunFolder`, so a name is spelled
once (see the run-folder table in CONTRACT.md and the README). Whole-file writes (the summary,
checkpoints) are atomic: a temporary file, flushed to disk, then renamed over the old one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
DIAGNOSTICS = "diagnostics.jsonl"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
PREVIOUS = "previous.pt"  # the checkpoint that the newest one replaced
BEST = "best.pt"
HYDRA = ".hydra"
OVERRIDES = "overrides.yaml"
HYDRA_SETTINGS = "hydra.yaml"  # Hydra's own config of the job: runtime.choices names each group's option


class _Inside:
    """A path inside the run folder, as a read-only attribute of `RunFolder`."""

    def __init__(self, *parts: str):
        self.parts = parts

    def __get__(self, folder: RunFolder, owner: type) -> Path:
        return folder.path.joinpath(*self.parts)


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run's folder (`optbench run`'s output folder, or one job of a sweep)."""

    path: Path

    summary = _Inside(SUMMARY)
    metrics = _Inside(METRICS)
    diagnostics = _Inside(DIAGNOSTICS)
    tensorboard = _Inside(TENSORBOARD)
    checkpoints = _Inside(CHECKPOINTS)
    last_checkpoint = _Inside(CHECKPOINTS, LAST)
    previous_checkpoint = _Inside(CHECKPOINTS, PREVIOUS)
    best_checkpoint = _Inside(CHECKPOINTS, BEST)
    overrides = _Inside(HYDRA, OVERRIDES)
    hydra_settings = _Inside(HYDRA, HYDRA_SETTINGS)

    def holds_run(self) -> bool:
        """Whether a run has written here (a summary, or checkpoints of an unfinished run)."""
        return self.summary.exists() or self.checkpoints.exists()

    def has_started(self) -> bool:
        """Whether a run got as far as its first metrics or checkpoint."""
        return self.checkpoints.is_dir() or self.metrics.exists()

    def read_summary(self) -> dict[str, Any]:
        """summary.json, or {} when the run has not written one (killed, or still running)."""
        return read_json(self.summary)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary, summary)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write `value` as JSON so that `path` always holds a complete file (non-finite as null)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(value), indent=2) + "\n")
    os.replace(tmp, path)


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats (a diverged loss) as null, so any JSON reader accepts it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
