"""The run folder: the one place that knows its file names, and how each file is written.

Every module that reads or writes a run's files goes through `RunFolder`, so a name is spelled
once (see the run-folder table in CONTRACT.md and the README). Whole-file writes (the summary,
checkpoints) are atomic: a temporary file, flushed to disk, then renamed over the old one; a write
that fails (a full disk) removes its temporary file and leaves the old file as it was.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optbench.errors import ConfigError

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
LOCK = ".optbench.lock"  # held by the one process that writes the folder (optbench.folder_lock)
FINISHED = ("completed", "diverged")  # a run with a final result: its folder is never written again


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

    def finished(self) -> str | None:
        """The final status (completed, diverged) of the run here; None while it has none. A
        summary.json cut short (by an older optbench on a full disk) is no result: a resume rewrites it."""
        try:
            status = self.read_summary().get("status")
        except DamagedFile:
            return None
        return status if status in FINISHED else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary, summary)


class DamagedFile(ConfigError):
    """A run's file that cannot be read back (cut short, or not what optbench writes)."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file does not exist; DamagedFile when it is not one."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError: cut short or overwritten
        raise DamagedFile(f"{path}: damaged, not a JSON file ({e}).") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"{path}: damaged, not a JSON object.")
    return value


def read_json_lines(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a JSON-lines file ([] when it does not exist), and its last line when a
    write cut short left it without its newline and unreadable (None otherwise): callers drop it
    and say so. Any other line that is not a JSON object raises DamagedFile, naming it."""
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.split("\n")  # the element after the last newline: "" or a partial line
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            return records, line
        else:
            raise DamagedFile(f"{path}: damaged, line {number} is not a JSON object ({line[:60]!r}).")
    return records, None


class writing:  # lower case: used as `with writing(path):`, as contextlib's classes are
    """Name `path` in an OSError that a write raises without a file name (a full disk found by a
    flush or by torch.save), so that the one line reporting it says which file.

    A class, not a generator context: a train line enters two, and a generator's took ~7 us each."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> bool:
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(self.path)
        return False  # the error goes on


@contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """The temporary file `.<name>.tmp` beside `path`, removed if the block fails, so that a
    failed write (a full disk) leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path):
            yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write `value` as JSON so that `path` always holds a complete file (non-finite as null)."""
    write_text_atomic(path, json_text(value, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` so that `path` always holds a complete file: the old one or the new one."""
    with temporary_beside(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def json_text(value: Any, indent: int | None = None) -> str:
    """`value` as JSON, with non-finite floats (a diverged loss) as null so any JSON reader accepts it."""
    try:  # most values have none: dumped as they are, without a copy (metrics.jsonl's lines)
        return json.dumps(value, indent=indent, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(value), indent=indent)


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats (a diverged loss) as null, so any JSON reader accepts it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
