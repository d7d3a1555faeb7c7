"""Shared test helpers: run the real CLI in a subprocess on tiny configs, read what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A run small enough for a test: a few steps on the bundled digits, no progress bar.
TINY = ["trainer.max_steps=6", "trainer.log_every=2", "trainer.eval_every=3", "trainer.progress=false"]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`optbench ARGS` in a fresh process (as a user runs it), from the folder `cwd`."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "optbench", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def run_dirs(root: Path) -> list[Path]:
    """Every run folder (one holding .hydra/) under `root`, oldest first."""
    return sorted((p.parent for p in root.rglob(".hydra")), key=lambda p: p.stat().st_mtime)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder to run optbench from; its outputs/ is where runs land."""
    return tmp_path
