"""benchmarks/gpu_check.py on the CPU (`--device cpu --quick`), so that the GPU check cannot rot
while no GPU is lent: it exits 0, writes its JSON, and reports nothing as passed that did not run;
and its checks can fail (a wrong optimizer update, an fp16 overflow the scaler would not skip)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from optbench.config import job_config
from optbench.paths import configs_dir
from optbench.trainer import Trainer

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
CUDA_ONLY = ["trick fp16 + GradScaler", "fp16 overflow", "peak memory", "ddp", "fsdp", "host syncs adamw",
             "host syncs lion", "host syncs lamb"]
SPEED_GOALS = ["trainer vs plain loop", "optimizer step lion", "optimizer step lamb", "optimizer step sophia"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """One quick CPU run of the script, as a user starts it."""
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=out.parent, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    result = out / "gpu_check.json"
    return done, json.loads(result.read_text()) if result.exists() else {}


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports benchmarks/throughput.py beside it
    import gpu_check

    return gpu_check


def test_quick_cpu_run_passes_and_writes_every_check_and_figure(quick):
    done, result = quick
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (result["device"], result["quick"], result["gpu"]) == ("cpu", True, None)
    names = [c["name"] for c in result["checks"]]
    for config in (p.stem for p in (configs_dir() / "optimizer").glob("*.yaml")):
        assert any(n == f"optimizer {config}" or n.startswith(f"optimizer {config} ") for n in names), config
    assert {"optimizer lamb plain", "optimizer lamb fused", "resume", "trick bf16", "trick trainer.compile",
            "trick channels_last", "trick EMA", *CUDA_ONLY, *SPEED_GOALS} <= set(names)
    assert not any(c["status"] == "fail" for c in result["checks"])
    counts = {s: sum(c["status"].startswith(s) for c in result["checks"]) for s in ("pass", "fail", "skipped")}
    assert result["counts"] == counts and sum(counts.values()) == len(names)
    assert f"gpu_check: {counts['pass']} passed, 0 failed, {counts['skipped']} skipped" in done.stdout
    figures = result["figures"]
    assert set(figures) >= {"optimizer_relative_error", "resume", "trainer_vs_plain", "optimizer_step", "samples_per_s"}
    assert figures["samples_per_s"]["digits_resnet20"].keys() == {"32", "bf16"}
    assert {"runs through the CLI", "optimizer step"} <= set(result["phases_s"])


def test_nothing_is_reported_as_passed_that_did_not_run(quick):
    _, result = quick
    checks = {c["name"]: c for c in result["checks"]}
    assert all(c["status"] in ("pass", "fail") or c["status"].startswith("skipped (") for c in checks.values())
    for name in CUDA_ONLY:
        assert checks[name]["status"] == "skipped (no CUDA)", checks[name]
    for name in SPEED_GOALS:  # measured and recorded, but a CUDA goal is not judged on a CPU
        assert checks[name]["status"] == "skipped (goal set for CUDA)" and checks[name]["value"] > 0
    for name, check in checks.items():
        if name.startswith("optimizer ") and check["status"] == "pass":
            assert check["value"] <= float(check["goal"].rsplit(" ", 1)[1])
            assert result["figures"]["optimizer_relative_error"][name] == check["value"]
    resume = result["figures"]["resume"]
    assert checks["resume"]["status"] == "pass" and 0 < resume["resumed_from_step"] < resume["steps"]


def test_a_wrong_update_fails_the_float64_comparison(gpu_check, tmp_path):
    overrides = ["optimizer=adamw", "model=mlp", "scheduler=constant", "trainer.max_steps=6", "trainer.eval_every=6"]
    Trainer(job_config([*overrides, *gpu_check.QUIET]), tmp_path / "run").fit()
    start, end = gpu_check.float64_reference(overrides, 6, tmp_path / "ref")
    assert gpu_check.relative_error(tmp_path / "run", start, end) < gpu_check.TOLERANCE
    start, end = gpu_check.float64_reference([*overrides, "optimizer.lr=0.0011"], 6, tmp_path / "ref-lr")
    assert gpu_check.relative_error(tmp_path / "run", start, end) > gpu_check.TOLERANCE


def test_fp16_overflow_is_skipped_by_the_scaler_and_the_run_goes_on(gpu_check, tmp_path, monkeypatch):
    ok, detail = gpu_check.fp16_overflow("cpu", ["model=mlp"], tmp_path / "run")
    assert ok, detail
    assert "weights unchanged True, loss scale 65536.0 -> 32768.0" in detail
    # A scaler that did not skip: the same check fails.
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, optimizer: optimizer.step())
    ok, detail = gpu_check.fp16_overflow("cpu", ["model=mlp"], tmp_path / "broken")
    assert not ok and "weights unchanged False" in detail


def test_bad_arguments_exit_2(gpu_check, tmp_path, monkeypatch, capsys):
    (tmp_path / "old.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cpu", "--out", str(tmp_path)])
    assert gpu_check.main() == 2
    assert f"--out {tmp_path}: not empty" in capsys.readouterr().err
    if not torch.cuda.is_available():
        monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path / "new")])
        assert gpu_check.main() == 2
        assert "--device cuda: no CUDA device here" in capsys.readouterr().err


def test_a_phase_that_crashes_is_a_failed_check_and_the_next_phase_runs(gpu_check):
    report = gpu_check.Report("cpu")
    with report.phase("first"):
        raise RuntimeError("boom")
    with report.phase("second"):
        report.judge("after", True, "ran")
    assert [(c.name, c.status) for c in report.checks] == [("first (crashed)", "fail"), ("after", "pass")]
    assert "RuntimeError: boom" in report.checks[0].detail and set(report.phases_s) == {"first", "second"}


def test_host_syncs_are_counted_in_the_steps_that_log_nothing(gpu_check, tmp_path):
    """The counting of the GPU check's `host syncs` (CUDA's sync debug mode, faked here on the CPU):
    a step that synchronises is counted; a step that logs or records diagnostics, and the first two, are
    left out."""
    modes, syncing = [], {5, 10}  # step 10 writes a train line: its sync is not counted

    def debug_mode(mode: str) -> None:
        modes.append(mode)

    overrides = ["model=mlp", "trainer.log_every=10", "trainer.diagnostics_every=7", *gpu_check.QUIET]
    trainer = gpu_check.build(overrides, 12, tmp_path)
    step = trainer.train_step

    def train_step(micro_batches, measure):
        if trainer.step + 1 in syncing:
            warnings.warn("called a synchronizing CUDA operation")  # what the debug mode says
        return step(micro_batches, measure)

    trainer.train_step = train_step
    with pytest.warns(UserWarning, match="synchronizing"):  # step 10's, not counted, reaches the caller
        syncs, watched = gpu_check.count_syncs(trainer, debug_mode)
    assert watched == {3, 4, 5, 6, 8, 9, 11}  # not 1, 2 (set-up), 7 (diagnostics), 10 (train line), 12 (the last)
    assert syncs == ["called a synchronizing CUDA operation"]
    assert modes == ["warn", "default"] * 2 * len(watched)  # on for each step and its bookkeeping, then off
