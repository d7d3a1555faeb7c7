"""SLURM sweeps through Hydra's submitit launcher: Hydra's plugin discovery instantiates it, the job
script that submitit would submit says what was asked (no cluster needed), and a job that gets
submitit's preemption signal checkpoints, is requeued by submitit, and resumes from its checkpoint:
in-process, and end to end through submitit's LocalExecutor."""

from __future__ import annotations

import os
import signal
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import submitit
import torch
from hydra.core.plugins import Plugins
from submitit.core.job_environment import SignalHandler
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE, LocalJobEnvironment

# The module, not its classes: Hydra's plugin scan executes it again, and the classes it registers
# are the ones the module holds afterwards.
from hydra_plugins.optbench_slurm_launcher import slurm_launcher
from conftest import read_metrics, read_summary, run_cli
from optbench.cluster import with_resume
from optbench.config import compose, job_config
from optbench.trainer import Trainer


def test_the_slurm_launcher_composes_and_renders_the_job_script(tmp_path, monkeypatch):
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                   "hydra.launcher.tasks_per_node=4", "hydra.launcher.timeout_min=90",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", "optimizer=sgd"])
    # As `optbench run -m` gets it: Hydra accepts a launcher only from the hydra_plugins package.
    launcher = Plugins.instance().instantiate_launcher(hydra_context=None, task_function=None, config=cfg)
    assert isinstance(launcher, slurm_launcher.SlurmLauncher)

    submitted = []

    def render(executor: submitit.AutoExecutor, function: object, *job_args: object) -> list:
        """Instead of sbatch: the script submitit would submit, and what each job would call."""
        slurm = executor._executor
        submitted.append((slurm._make_submission_file_text(slurm._submitit_command_str, "0"), function, job_args))
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", render)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were here
    launcher.launch([["optimizer=sgd", "optimizer.lr=0.1"], ["optimizer=sgd", "optimizer.lr=0.3"]], 0)

    [(script, function, job_args)] = submitted
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=90", "#SBATCH --signal=USR2@120",
                 "#SBATCH --job-name=optbench", "#SBATCH --requeue",
                 f"#SBATCH --output={tmp_path / 'sweep'}/.submitit/%j/%j_0_log.out"):
        assert line in script.splitlines(), (line, script)
    assert "srun" in script and "-m submitit.core._submit" in script
    assert function is launcher  # each job calls the launcher, which adds trainer.resume=auto
    assert list(job_args[0]) == [["optimizer=sgd", "optimizer.lr=0.1"], ["optimizer=sgd", "optimizer.lr=0.3"]]
    assert launcher.params["max_num_timeout"] == 20  # requeued after running out of time


def test_with_resume_keeps_a_resume_that_the_sweep_sets():
    assert with_resume(["optimizer=sgd"]) == ["optimizer=sgd", "trainer.resume=auto"]
    assert with_resume(["trainer.resume=/runs/a/last.pt"]) == ["trainer.resume=/runs/a/last.pt"]


def test_a_preempted_job_checkpoints_is_requeued_by_submitit_and_resumes(tmp_path, monkeypatch):
    overrides = ["trainer.max_steps=12", "scheduler=warmup_cosine", "trainer.log_every=3", "trainer.progress=false",
                 "trainer.tensorboard=false", "trainer.deterministic=true"]
    whole = Trainer(job_config(overrides), tmp_path / "whole")
    assert whole.fit()["status"] == "completed"

    # Inside a submitit job: submitit installs its handler for the preemption signal at the start.
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "7")
    paths = JobPaths(tmp_path / "submitit", job_id="7")
    paths.folder.mkdir(parents=True)
    job = DelayedSubmission(slurm_launcher.SlurmLauncher(), overrides, "hydra.sweep.dir", 0, "job_id_for_0", {})
    job.set_timeout(60, 3)
    handler = SignalHandler(LocalJobEnvironment(), paths, job)
    previous = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)

    original = Trainer.train_step

    def preempted(self: Trainer, *args: object, **kwargs: object) -> object:
        if self.step == 4:  # SLURM's warning arrives during step 5
            os.kill(os.getpid(), signal.SIGUSR2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", preempted)
    try:
        with pytest.raises(SystemExit) as ended:
            Trainer(job_config(overrides), tmp_path / "job").fit()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    monkeypatch.setattr(Trainer, "train_step", original)

    assert ended.value.code == LOCAL_REQUEUE_RETURN_CODE  # submitit requeued the job ...
    summary = read_summary(tmp_path / "job")  # ... after optbench finished step 5 and checkpointed it
    assert summary["status"] == "interrupted" and summary["steps"] == 5
    requeued = DelayedSubmission.load(paths.submitted_pickle)
    assert isinstance(requeued.function, slurm_launcher.SlurmLauncher) and requeued.args[0] == overrides

    # The requeued job: the same call, which the launcher runs with trainer.resume=auto.
    resumed = Trainer(job_config(with_resume(requeued.args[0])), tmp_path / "job")
    assert resumed.fit()["status"] == "completed"
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_a_sweep_through_submitit_requeues_a_stopped_job_which_resumes(workdir):
    """`hydra/launcher=slurm_local`: the sweep's job is a process under submitit's LocalExecutor.
    SIGUSR2 (SLURM's warning before the time limit) mid-run: the job checkpoints, submitit requeues
    it, and the job that runs again resumes from the checkpoint and completes."""
    sweep_dir, steps = workdir / "sweep", 1000  # about 2 s of training: the signal arrives mid-run
    ended: list[subprocess.CompletedProcess] = []
    sweep = threading.Thread(target=lambda: ended.append(run_cli(
        "run", "-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep_dir}", f"trainer.max_steps={steps}",
        "trainer.log_every=25", "trainer.eval_every=500", "trainer.progress=false", "trainer.tensorboard=false",
        cwd=workdir, env={"OMP_NUM_THREADS": "1"})))
    sweep.start()
    os.kill(training_task(sweep_dir, sweep_dir / "0"), signal.SIGUSR2)
    sweep.join()

    [result] = ended
    assert result.returncode == 0, result.stderr
    assert "1 completed" in result.stderr
    log = (sweep_dir / "0" / "optbench.log").read_text()
    assert "SIGUSR2 received" in log and "resumed from" in log, log
    [submitit_log] = (sweep_dir / ".submitit").glob("*/*_0_log.out")
    assert "Requeued job" in submitit_log.read_text()
    assert read_summary(sweep_dir / "0")["status"] == "completed" and read_summary(sweep_dir / "0")["steps"] == steps
    logged = [m["step"] for m in read_metrics(sweep_dir / "0") if m["split"] == "train"]
    assert logged == list(range(25, steps + 1, 25))  # each step once: the resume continued where it stopped


def training_task(sweep_dir: Path, run_dir: Path, timeout_s: float = 120) -> int:
    """The process id of the sweep's first submitit task, once its run has logged a training line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and any(m["split"] == "train" for m in read_metrics(metrics.parent)):
            # The job's folder is named after the job id: the pid of submitit's controller, the
            # task's parent.
            [controller] = (p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
            return int(Path(f"/proc/{controller}/task/{controller}/children").read_text().split()[0])
        time.sleep(0.05)
    raise AssertionError(f"no training line in {run_dir} after {timeout_s} s")


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_slurm_without_slurm_is_refused_before_anything_runs(tmp_path):
    from optbench.config import validate_overrides
    from optbench.errors import ConfigError

    with pytest.raises(ConfigError, match="hydra/launcher=slurm: SLURM's sbatch is not found.*slurm_local"):
        validate_overrides(["hydra/launcher=slurm", "optimizer=sgd", f"hydra.sweep.dir={tmp_path / 's'}"],
                           multirun=True)
    assert not (tmp_path / "s").exists()
