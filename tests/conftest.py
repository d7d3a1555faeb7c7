"""Shared test helpers: run the real CLI in a subprocess on tiny configs, read what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def write_fake_cifar10(root: Path, per_batch: int = 8) -> None:
    """CIFAR-10's python layout: pickled dicts of uint8 rows (3x32x32, channel-major) and labels."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


def accept_fake_cifar(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the real files' MD5 sums; fake files pass only with the check off (in
    this process)."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_fake_cifar10(tmp_path)
    accept_fake_cifar(monkeypatch)
    return tmp_path
