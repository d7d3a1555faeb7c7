"""Reliability: exact resume after a crash, crash-safe checkpoints, preemption, safe loading."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import read_metrics, read_summary, run_cli
from optbench import checkpoint
from optbench.config import job_config, validate_overrides
from optbench.errors import ConfigError
from optbench.paths import configs_dir
from optbench.trainer import Trainer

SMALL = ["data.batch_size=64", "trainer.max_steps=18", "trainer.checkpoint_every=2",
         "trainer.eval_every=6", "trainer.log_every=3", "trainer.deterministic=true",
         "trainer.progress=false", "trainer.tensorboard=false"]


class Crash(Exception):
    """Stands for SIGKILL: the process dies and keeps nothing that was not checkpointed."""


def final_params(overrides: list[str], run_dir, crash_at: int | None = None) -> list[torch.Tensor]:
    if not any(o.startswith("model=") for o in overrides):
        overrides = ["model.hidden=[16]", *overrides]
    trainer = Trainer(job_config([*SMALL, *overrides]), run_dir)
    if crash_at is not None:
        original = trainer.train_step

        def dying(*args, **kwargs):
            if trainer.step == crash_at:
                raise Crash
            return original(*args, **kwargs)

        trainer.train_step = dying
        with pytest.raises(Crash):
            trainer.fit()
        trainer = Trainer(job_config([*SMALL, *overrides, "trainer.resume=auto"]), run_dir)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["steps"] == 18
    return [p.detach().clone() for p in trainer.model.parameters()]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (configs_dir() / group).glob("*.yaml"))


# Each optimizer with a schedule, each schedule with an optimizer, and the tricks that keep state.
INNER = {"lookahead": ["optimizer@optimizer.inner=adamw"]}  # a wrapper needs its inner optimizer
RESUME_CASES = (
    [[f"optimizer={o}", *INNER.get(o, []), "scheduler=warmup_cosine"] for o in options("optimizer")]
    + [[f"scheduler={s}", "optimizer=momentum", "optimizer.lr=0.05"] for s in options("scheduler")]
    + [["trainer.accumulation_steps=3"], ["trainer.ema.decay=0.9"], ["trainer.precision=bf16"],
       ["params=layer_decay", "optimizer=lamb"]]
)


@pytest.mark.parametrize("overrides", RESUME_CASES, ids=[" ".join(c) for c in RESUME_CASES])
def test_crash_at_a_random_step_then_resume_is_bitwise_equal(tmp_path, overrides):
    if any("8bit" in o for o in overrides):
        pytest.importorskip("bitsandbytes", reason="8-bit optimizers need bitsandbytes")
    crash_at = random.Random(" ".join(overrides)).randint(3, 16)  # mid-epoch, maybe mid-accumulation
    whole = final_params(overrides, tmp_path / "whole")
    resumed = final_params(overrides, tmp_path / "crashed", crash_at=crash_at)
    for a, b in zip(whole, resumed):
        assert torch.equal(a, b), f"differs after a crash before step {crash_at + 1}"


def _write_forever(folder, state) -> None:
    """Child process: write checkpoints as fast as it can until it is killed."""
    for i in range(10**6):
        state["progress"]["step"] = i
        checkpoint.save_atomic(state, folder / "last.pt")


def test_killed_during_checkpoint_writes_a_complete_checkpoint_remains(tmp_path):
    trainer = Trainer(job_config([*SMALL, "model.hidden=[1024,1024]"]), tmp_path)
    state = trainer.state_dict()  # about 12 MB with AdamW's moments: writes take a while
    folder = tmp_path / "checkpoints"
    fork = multiprocessing.get_context("fork")  # a forked writer starts at once, torch imported
    rng = random.Random(0)
    steps = []
    for _ in range(20):
        writer = fork.Process(target=_write_forever, args=(folder, state))
        writer.start()
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        found = checkpoint.newest_complete(folder)
        assert found is not None
        path, loaded = found
        assert path.name in ("last.pt", "previous.pt")
        steps.append(loaded["progress"]["step"])
    assert len(set(steps)) > 1  # kills landed at different moments
    resumed = Trainer(job_config([*SMALL, "model.hidden=[1024,1024]", "trainer.resume=auto"]), tmp_path)
    resumed.step = 0
    summary = resumed.fit()
    assert summary["status"] == "completed"


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path):
    folder = tmp_path / "checkpoints"
    checkpoint.save_atomic({"model": {}, "progress": {"step": 1}}, folder / "last.pt")
    checkpoint.save_atomic({"model": {}, "progress": {"step": 2}}, folder / "last.pt")
    assert checkpoint.newest_complete(folder)[1]["progress"]["step"] == 2
    (folder / "last.pt").write_bytes(b"garbage")
    path, state = checkpoint.newest_complete(folder)
    assert path.name == "previous.pt" and state["progress"]["step"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopped_run_resumes_with_the_same_command_to_the_same_result(workdir, sig):
    """SIGTERM: checkpoint at the step boundary, status `interrupted`, exit 1. SIGKILL: nothing
    more is written; the last periodic checkpoint is complete. Either way the same command with
    trainer.resume=auto ends bitwise where an uninterrupted run ends."""
    # About a millisecond a step: the signal lands somewhere in the middle of 1,500 steps.
    command = ["run", "trainer.max_steps=1500", "trainer.log_every=10", "trainer.eval_every=1000",
               "trainer.checkpoint_every=50", "trainer.deterministic=true", "trainer.progress=false",
               f"hydra.run.dir={workdir / 'run'}"]
    # One thread: tiny steps with two OpenMP threads crawl when another process shares the cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "optbench", *command], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 10):
        time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert process.returncode == 1, err
        summary = read_summary(workdir / "run")
        assert summary["status"] == "interrupted" and 100 <= summary["steps"] < 1500
        assert "SIGTERM received" in out + err
    else:
        assert process.returncode == -signal.SIGKILL
        assert not (workdir / "run" / "summary.json").exists()

    resumed = run_cli(*command, "trainer.resume=auto", cwd=workdir, env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(workdir / "run")["status"] == "completed"
    steps = [line for line in metrics.read_text().splitlines() if '"split": "train"' in line]
    assert len(steps) == 150  # every 10th step logged exactly once across the two processes

    whole = run_cli(*command[:-1], f"hydra.run.dir={workdir / 'whole'}", cwd=workdir, env={"OMP_NUM_THREADS": "1"})
    assert whole.returncode == 0
    a = torch.load(workdir / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(workdir / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_with_pickled_code_is_refused(workdir):
    evil = workdir / "evil.pt"
    torch.save({"model": {}, "progress": {}, "payload": os.system}, evil)
    with pytest.raises(Exception, match="pickled code"):
        checkpoint.load(evil)
    result = run_cli("run", "trainer.max_steps=2", f"trainer.resume={evil}", cwd=workdir)
    assert result.returncode == 2
    assert f"trainer.resume={evil}" in result.stderr and "pickled code" in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_from_another_configuration_is_explained(workdir):
    first = run_cli("run", "trainer.max_steps=2", "trainer.progress=false", f"hydra.run.dir={workdir / 'a'}",
                    cwd=workdir)
    assert first.returncode == 0
    ckpt = workdir / "a" / "checkpoints" / "last.pt"
    result = run_cli("run", "model.hidden=[32]", f"trainer.resume={ckpt}", cwd=workdir)
    assert result.returncode == 2
    assert "does not fit this configuration" in result.stderr and "model.hidden" in result.stderr
    assert "Traceback" not in result.stderr


EXTEND = ["model.hidden=[16]", "trainer.log_every=5", "trainer.eval_every=10", "trainer.progress=false",
          "trainer.tensorboard=false"]


def logged_lrs(run_dir) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(run_dir) if "lr" in r}


def test_finished_run_extended_follows_a_schedule_planned_for_the_new_length(tmp_path, caplog):
    """A finished 20-step cosine run resumed with trainer.max_steps=40: after the resume the LR is
    the 40-step run's (it ends near 0), not the old cosine wrapped up again (9.9e-4 at step 40)."""
    cosine = [*EXTEND, "scheduler=cosine"]
    Trainer(job_config([*cosine, "trainer.max_steps=20"]), tmp_path / "run").fit()
    with caplog.at_level(logging.WARNING, logger="optbench"):
        Trainer(job_config([*cosine, "trainer.max_steps=40", "trainer.resume=auto"]), tmp_path / "run").fit()
    Trainer(job_config([*cosine, "trainer.max_steps=40"]), tmp_path / "whole").fit()
    extended, whole = logged_lrs(tmp_path / "run"), logged_lrs(tmp_path / "whole")
    assert [extended[s] for s in (25, 30, 35, 40)] == [whole[s] for s in (25, 30, 35, 40)]
    assert extended[40] < 1e-5
    assert "(Cosine) was planned for 20 optimizer steps and this run has 40: re-planned" in caplog.text


def test_resume_with_another_length_is_refused_where_a_torch_scheduler_holds_it(tmp_path):
    """torch's OneCycleLR keeps total_steps in its state: extended, it would fail past the old
    length mid-run, so the pre-flight refuses, naming the key and the checkpoint's length."""
    onecycle = [*EXTEND, "scheduler=none", "~scheduler.warmup", "+scheduler.max_lr=0.01",
                "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", f"hydra.run.dir={tmp_path}"]
    Trainer(job_config([*onecycle[:-1], "trainer.max_steps=4"]), tmp_path).fit()
    validate_overrides([*onecycle, "trainer.max_steps=4", "trainer.resume=auto"], multirun=False)  # the same run
    with pytest.raises(ConfigError) as refused:
        validate_overrides([*onecycle, "trainer.max_steps=8", "trainer.resume=auto"], multirun=False)
    message = str(refused.value)
    assert message.startswith("trainer.max_steps=8 with trainer.resume=auto")
    assert "a run of 4 optimizer steps" in message and "Resume with trainer.max_steps=4" in message
