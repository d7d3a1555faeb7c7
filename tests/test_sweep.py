"""Sweeps: a failing job costs the others nothing, sweep.json indexes the jobs, a re-run runs
nothing that has a result, a stopped sweep resumes, and every job shows in TensorBoard's HParams."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import TINY, read_metrics, read_summary, run_cli

# A model that fails at run time (in forward, after the run folder exists) for one job of the
# sweep: dropout 0.1 with seed 1; and one that stops its own process with SIGTERM once.
FAULTY = '''
import os, signal
from pathlib import Path
import torch
from optbench.models import MLP

class FailsForOneJob(MLP):
    def forward(self, x):
        if self.training and torch.initial_seed() == 1 and any(isinstance(m, torch.nn.Dropout) for m in self):
            raise RuntimeError("this model fails on purpose")
        return super().forward(x)

class SignalsOnce(MLP):
    """Sends SIGTERM to its own process at the 3rd training forward of seed 1, once (a marker file)."""
    calls = 0
    def forward(self, x):
        marker = Path(os.environ["SIGNAL_MARKER"])
        if self.training and torch.initial_seed() == 1 and not marker.exists():
            SignalsOnce.calls += 1
            if SignalsOnce.calls == 3:
                marker.touch()
                os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)
'''


@pytest.fixture(scope="module")
def faulty_env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("faulty")
    (folder / "faulty.py").write_text(FAULTY)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SIGNAL_MARKER": str(folder / "signalled")}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, except the index and Hydra's own records."""
    skip = {"sweep.json", "multirun.yaml", ".sweep.lock"}
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip and ".hydra" not in p.parts}


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory, faulty_env):
    """A 4-job sweep (dropout x seed) in which job 3 (dropout 0.1, seed 1) raises in forward."""
    workdir = tmp_path_factory.mktemp("sweep")
    command = ["run", "-m", *TINY, "model._target_=faulty.FailsForOneJob", "model.dropout=0.0,0.1",
               "trainer.seed=0,1"]
    result = run_cli(*command, cwd=workdir, env=faulty_env)
    (sweep_dir,) = (workdir / "outputs" / "multirun").glob("*/*")
    return workdir, command, result, sweep_dir


def test_a_failing_job_costs_the_others_nothing(failed_sweep):
    _, _, result, sweep_dir = failed_sweep
    assert result.returncode == 1, result.stderr  # a failed job: exit status 1, after every job ran
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert index["overrides"] == [*TINY, "model._target_=faulty.FailsForOneJob", "model.dropout=0.0,0.1",
                                  "trainer.seed=0,1"]
    jobs = index["jobs"]
    assert [job["job"] for job in jobs] == [0, 1, 2, 3]
    assert [job["status"] for job in jobs] == ["completed", "completed", "completed", "failed"]
    assert [job["exit_code"] for job in jobs] == [0, 0, 0, 1]
    assert jobs[3]["overrides"][-2:] == ["model.dropout=0.1", "trainer.seed=1"]
    assert "RuntimeError: this model fails on purpose" in jobs[3]["error"]
    for job in jobs[:3]:
        summary = read_summary(sweep_dir / job["run_dir"])
        assert summary["status"] == "completed" and summary["steps"] == 6
        assert job["final"] == pytest.approx(summary["final"]) and job["best"] == pytest.approx(summary["best"])
        assert 0 < job["best"]["val/acc"] <= 1
    failed = read_summary(sweep_dir / "3")
    assert failed["status"] == "failed"
    assert "this model fails on purpose" in failed["error"]
    assert f"hydra.sweep.dir={sweep_dir.relative_to(failed_sweep[0])}" in result.stderr  # how to re-run it


def test_rerunning_the_sweep_runs_nothing_new(failed_sweep, faulty_env):
    workdir, command, _, sweep_dir = failed_sweep
    before = snapshot(sweep_dir)
    jobs_before = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    hydra_files = {p: p.read_bytes() for p in sweep_dir.glob("*/.hydra/*.yaml")}
    again = run_cli(*command, f"hydra.sweep.dir={sweep_dir.relative_to(workdir)}", cwd=workdir, env=faulty_env)
    assert again.returncode == 1, again.stderr  # the sweep still holds its failed job
    assert again.stderr.count("earlier, skipped") == 4
    assert snapshot(sweep_dir) == before  # no metrics, summaries, checkpoints or events touched
    assert {p: p.read_bytes() for p in sweep_dir.glob("*/.hydra/*.yaml")} == hydra_files
    assert json.loads((sweep_dir / "sweep.json").read_text())["jobs"] == jobs_before


def test_the_folder_of_another_sweep_is_refused(failed_sweep, faulty_env, monkeypatch, capsys):
    from optbench.commands.run import run

    workdir, command, _, sweep_dir = failed_sweep
    monkeypatch.syspath_prepend(faulty_env["PYTHONPATH"].split(os.pathsep)[0])
    before = snapshot(sweep_dir)
    assert run([*command[1:-1], "trainer.seed=0,1,2", f"hydra.sweep.dir={sweep_dir}"]) == 2
    message = capsys.readouterr().err
    assert f"hydra.sweep.dir={sweep_dir}: that folder holds the sweep of other overrides" in message
    assert "Traceback" not in message
    assert snapshot(sweep_dir) == before


def test_every_job_logs_its_hyperparameters_and_status_for_tensorboard(failed_sweep):
    _, _, _, sweep_dir = failed_sweep
    varied = {"0": ("0.0", "0"), "1": ("0.0", "1"), "2": ("0.1", "0"), "3": ("0.1", "1")}
    for job, (dropout, seed) in varied.items():
        summary = read_summary(sweep_dir / job)
        (run_tb,) = (sweep_dir / job / "tb").iterdir()
        assert run_tb.name == f"model.dropout={dropout},trainer.seed={seed}"  # the keys the sweep varies
        events = EventAccumulator(str(run_tb))
        events.Reload()
        plugin = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        start = hparams_metadata.parse_session_start_info_plugin_data(plugin[hparams_metadata.SESSION_START_INFO_TAG])
        hparams = {k: v.string_value or v.number_value for k, v in start.hparams.items()}
        end = hparams_metadata.parse_session_end_info_plugin_data(plugin[hparams_metadata.SESSION_END_INFO_TAG])
        # The varied keys (not the constant ones), plus optimizer name, lr, weight decay, batch size, status.
        assert hparams == {"optimizer": "adamw", "optimizer.lr": pytest.approx(1e-3),
                           "optimizer.weight_decay": pytest.approx(0.01), "data.batch_size": 128,
                           "model.dropout": float(dropout), "trainer.seed": float(seed), "status": summary["status"]}
        # No experiment record: TensorBoard takes the columns from the union of all runs' hparams.
        assert hparams_metadata.EXPERIMENT_TAG not in plugin
        if job != "3":
            assert summary["status"] == "completed" and end.status == api_pb2.STATUS_SUCCESS
            acc = events.Scalars("best/val/acc")[-1]
            assert acc.value == pytest.approx(summary["best"]["val/acc"]) and acc.step == 6
        else:  # the failed job has its row too, and says so
            assert summary["status"] == "failed" and end.status == api_pb2.STATUS_FAILURE


def test_a_stopped_sweep_resumes_its_interrupted_job(tmp_path, faulty_env):
    """SIGTERM in job 1 ends the sweep with that job checkpointed; the re-run skips job 0, resumes
    job 1 from its checkpoint and runs job 2."""
    command = ["run", "-m", *TINY, "model._target_=faulty.SignalsOnce", "trainer.seed=0,1,2",
               "hydra.sweep.dir=outputs/stopped"]
    first = run_cli(*command, cwd=tmp_path, env=faulty_env)
    assert first.returncode == 1, first.stderr
    sweep_dir = tmp_path / "outputs" / "stopped"
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert [(j["job"], j["status"]) for j in index["jobs"]] == [(0, "completed"), (1, "interrupted")]
    assert index["stopped"] is True
    stopped_at = read_summary(sweep_dir / "1")["steps"]
    assert 3 <= stopped_at < 6 and (sweep_dir / "1" / "checkpoints" / "last.pt").is_file()
    assert not (sweep_dir / "2").exists()  # the sweep ended there
    job0 = snapshot(sweep_dir / "0")

    second = run_cli(*command, cwd=tmp_path, env=faulty_env)
    assert second.returncode == 0, second.stderr
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert [(j["job"], j["status"]) for j in index["jobs"]] == [(0, "completed"), (1, "completed"), (2, "completed")]
    assert "stopped" not in index
    assert snapshot(sweep_dir / "0") == job0
    resumed = read_summary(sweep_dir / "1")
    assert resumed["steps"] == 6 and resumed["config"]["trainer"]["resume"] == "auto"
    steps = [m["step"] for m in read_metrics(sweep_dir / "1") if m["split"] == "train"]
    assert steps == [2, 4, 6]  # continued from the checkpoint, nothing logged twice


def test_joblib_jobs_in_other_processes_report_their_exit_status(tmp_path, faulty_env):
    """hydra/launcher=joblib: jobs run in worker processes, yet sweep.json and the exit status
    say that job 1 failed."""
    result = run_cli("run", "-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "model._target_=faulty.FailsForOneJob", "model.dropout=0.0,0.1", "trainer.seed=1",
                     "hydra.sweep.dir=outputs/parallel", cwd=tmp_path, env=faulty_env)
    assert result.returncode == 1, result.stderr
    sweep_dir = tmp_path / "outputs" / "parallel"
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert [(j["job"], j["status"], j["exit_code"]) for j in jobs] == [(0, "completed", 0), (1, "failed", 1)]
    assert read_summary(sweep_dir / "0")["steps"] == 6
    assert "this model fails on purpose" in read_summary(sweep_dir / "1")["error"]


def test_optuna_sweeper_optimizes_the_monitored_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from omegaconf import OmegaConf

    result = run_cli("run", "-m", "hparams_search=adamw_optuna", "hydra.sweeper.n_trials=2", *TINY,
                     "hydra.sweep.dir=outputs/optuna", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep_dir = tmp_path / "outputs" / "optuna"
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    lrs = {float(o.split("=")[1]) for j in jobs for o in j["overrides"] if o.startswith("optimizer.lr=")}
    assert len(lrs) == 2 and all(1e-5 <= lr <= 1e-2 for lr in lrs)  # drawn by Optuna from the config's range
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(j["best"]["val/acc"] for j in jobs))


def test_resume_auto_without_a_checkpoint_drops_the_lines_of_the_killed_attempt(tmp_path):
    """A job killed before its first checkpoint restarts from scratch on the re-run (resume=auto
    finds nothing): the lines that the killed attempt wrote must not stay in metrics.jsonl."""
    from optbench.config import job_config
    from optbench.trainer import Trainer

    stale = {"step": 2, "epoch": 0.1, "time": 0.1, "split": "train", "loss": 99.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(stale) + "\n")
    cfg = job_config([*TINY, "trainer.resume=auto", "trainer.tensorboard=false"])
    assert Trainer(cfg, tmp_path).fit()["status"] == "completed"
    lines = read_metrics(tmp_path)
    assert [m["step"] for m in lines if m["split"] == "train"] == [2, 4, 6]
    assert all(m.get("loss") != 99.0 for m in lines)


def test_search_intervals_are_validated_at_both_ends():
    """Optuna's `interval(a, b)` cannot be enumerated; its two ends are checked before any trial."""
    from optbench.config import sweep_choices, validate_overrides
    from optbench.errors import ConfigError

    assert sweep_choices(["optimizer.lr=tag(log, interval(1e-4, 0.1))"]) == [["optimizer.lr=0.0001", "optimizer.lr=0.1"]]
    validate_overrides(["optimizer.lr=interval(1e-4, 0.1)", "trainer.max_steps=2"], multirun=True)
    with pytest.raises(ConfigError, match="optimizer.lr"):
        validate_overrides(["optimizer.lr=interval(-1, 0.1)", "trainer.max_steps=2"], multirun=True)


def test_report_on_the_sweep_shows_every_job_and_its_failure(failed_sweep, tmp_path):
    from optbench.cli import main

    _, _, _, sweep_dir = failed_sweep
    out = tmp_path / "report"
    assert main(["report", str(sweep_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert sorted(row["status"] for row in rows) == ["completed", "completed", "completed", "failed"]
    assert {"model.dropout", "trainer.seed"} <= set(rows[0])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count("<table") >= 1 and "data:image/png;base64," in html and "failed" in html
