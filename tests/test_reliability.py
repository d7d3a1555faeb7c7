"""Reliability: exact resume after a crash, crash-safe checkpoints, preemption, safe loading."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
       ["params=layer_decay", "optimizer=lamb"],
       # a 64x1100 weight: LARS keeps its norm between steps, and a resumed run sums it afresh
       ["optimizer=lars", "model.hidden=[1100]"]]
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
    metrics, first_checkpoint = workdir / "run" / "metrics.jsonl", workdir / "run" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not first_checkpoint.exists():  # step 50's: the SIGKILLed run resumes from it
        time.sleep(0.05)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert process.returncode == 1, err
        summary = read_summary(workdir / "run")
        assert summary["status"] == "interrupted" and 50 <= summary["steps"] < 1500
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
    """A finished 20-step cosine run trained on to trainer.max_steps=40 (in a new folder, from its
    checkpoint): after the resume the LR is the 40-step run's (it ends near 0), not the old cosine
    wrapped up again (9.9e-4 at step 40)."""
    cosine = [*EXTEND, "scheduler=cosine"]
    Trainer(job_config([*cosine, "trainer.max_steps=20"]), tmp_path / "run").fit()
    finished = tmp_path / "run" / "checkpoints" / "last.pt"
    with caplog.at_level(logging.WARNING, logger="optbench"):
        Trainer(job_config([*cosine, "trainer.max_steps=40", f"trainer.resume={finished}"]), tmp_path / "longer").fit()
    Trainer(job_config([*cosine, "trainer.max_steps=40"]), tmp_path / "whole").fit()
    extended, whole = logged_lrs(tmp_path / "longer"), logged_lrs(tmp_path / "whole")
    assert [extended[s] for s in (25, 30, 35, 40)] == [whole[s] for s in (25, 30, 35, 40)]
    assert extended[40] < 1e-5
    assert "(Cosine) was planned for 20 optimizer steps and this run has 40: re-planned" in caplog.text


def test_resume_with_another_length_is_refused_where_a_torch_scheduler_holds_it(tmp_path):
    """torch's OneCycleLR keeps total_steps in its state: extended, it would fail past the old
    length mid-run, so the pre-flight refuses, naming the key and the checkpoint's length."""
    onecycle = [*EXTEND, "scheduler=none", "~scheduler.warmup", "+scheduler.max_lr=0.01",
                "scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", f"hydra.run.dir={tmp_path}"]
    Trainer(job_config([*onecycle[:-1], "trainer.max_steps=4"]), tmp_path).fit()
    (tmp_path / "summary.json").unlink()  # killed before its summary: unfinished, so it may be resumed
    validate_overrides([*onecycle, "trainer.max_steps=4", "trainer.resume=auto"], multirun=False)  # the same run
    with pytest.raises(ConfigError) as refused:
        validate_overrides([*onecycle, "trainer.max_steps=8", "trainer.resume=auto"], multirun=False)
    message = str(refused.value)
    assert message.startswith("trainer.max_steps=8 with trainer.resume=auto")
    assert "a run of 4 optimizer steps" in message and "Resume with trainer.max_steps=4" in message


# ---------------------------------------------------------------- the run folder as a unit

QUICK = ["trainer.max_steps=4", "trainer.log_every=2", "trainer.eval_every=2", "trainer.checkpoint_every=2",
         "trainer.progress=false", "trainer.tensorboard=false", "model.hidden=[16]"]


def folder_state(folder) -> dict[str, tuple[bytes, int]]:
    """Every file of a folder (Hydra's .hydra/, the log and the lock included): bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def optbench_run(*args: str) -> int:
    """`optbench run ARGS` in this process (fast: no interpreter start), its exit status."""
    from optbench.commands.run import run

    return run(list(args))


def test_no_command_modifies_a_finished_run(tmp_path, monkeypatch, capsys):
    """Another run's checkpoint (another optimizer, or the same one), a longer run or another LR
    with trainer.resume=auto: refused with exit status 2 before anything in the folder is touched;
    the same command with trainer.resume=auto says the run is finished and changes nothing."""
    monkeypatch.chdir(tmp_path)
    finished, sgd, adamw = tmp_path / "finished", tmp_path / "sgd", tmp_path / "adamw"
    assert optbench_run(*QUICK, "optimizer=adamw", f"hydra.run.dir={finished}") == 0
    assert optbench_run(*QUICK, "optimizer=sgd", f"hydra.run.dir={sgd}") == 0
    assert optbench_run(*QUICK, "optimizer=adamw", "trainer.seed=1", f"hydra.run.dir={adamw}") == 0
    capsys.readouterr()
    before = folder_state(finished)
    into_finished = [*QUICK, "optimizer=adamw", f"hydra.run.dir={finished}"]
    assert optbench_run(*into_finished, f"trainer.resume={sgd / 'checkpoints' / 'last.pt'}") == 2
    err = capsys.readouterr().err
    assert "optimizer._target_ (torch.optim.SGD -> torch.optim.AdamW)" in err and "Traceback" not in err
    assert optbench_run(*into_finished, f"trainer.resume={adamw / 'checkpoints' / 'last.pt'}") == 2
    err = capsys.readouterr().err
    assert f"trainer.resume={adamw / 'checkpoints' / 'last.pt'} with hydra.run.dir={finished}" in err
    assert "not its own" in err and "Traceback" not in err
    for change, shown in (("trainer.max_steps=8", "trainer.max_steps=8 (the run: 4)"),
                          ("optimizer.lr=0.5", "optimizer.lr=0.5 (the run: 0.001)")):
        assert optbench_run(*into_finished, change, "trainer.resume=auto") == 2
        err = capsys.readouterr().err
        assert "that run is finished (completed)" in err and shown in err
        assert f"hydra.run.dir=NEW trainer.resume={finished / 'checkpoints' / 'last.pt'}" in err
    assert optbench_run(*into_finished, "trainer.resume=auto") == 0
    assert "that run is finished (completed, 4 steps); nothing was run or written" in capsys.readouterr().err
    assert folder_state(finished) == before


def hold_lock(folder) -> subprocess.Popen:
    """Another process that holds `folder`'s lock (as a running `optbench run` does) until killed."""
    code = ("import sys, time; from pathlib import Path; from optbench.folder_lock import FolderLock; "
            "FolderLock.take(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_naming_the_first(tmp_path, monkeypatch, capsys):
    """While a process writes a run folder, a fresh run or a resume there exits 2 naming its PID and
    leaves the folder as it is (no .hydra/, no log); the lock goes when that process dies, SIGKILL
    included, and then the resume runs."""
    from optbench.folder_lock import holder

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run"
    assert optbench_run(*QUICK, "trainer.max_steps=6", f"hydra.run.dir={folder}") == 0
    (folder / "summary.json").unlink()  # as a run killed after its last checkpoint leaves it
    writer = hold_lock(folder)
    try:
        before = folder_state(folder)
        capsys.readouterr()
        for resume in ([], ["trainer.resume=auto"]):
            assert optbench_run(*QUICK, "trainer.max_steps=6", f"hydra.run.dir={folder}", *resume) == 2
            err = capsys.readouterr().err
            assert f"hydra.run.dir={folder}: process {writer.pid} is writing that run folder" in err
            assert "Traceback" not in err
        assert optbench_run(*QUICK, f"hydra.run.dir={tmp_path / 'fresh'}") == 0  # other folders are free
        assert folder_state(folder) == before
    finally:
        writer.kill()
        writer.wait()
    assert holder(folder) is None
    assert optbench_run(*QUICK, "trainer.max_steps=6", f"hydra.run.dir={folder}", "trainer.resume=auto") == 0
    assert read_summary(folder)["status"] == "completed"
    assert int((folder / ".optbench.lock").read_text()) == os.getpid()  # the last writer


def test_a_sweep_rerun_does_not_touch_a_job_that_a_live_process_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *QUICK, "trainer.seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    assert optbench_run(*command) == 0
    # Job 1 as a killed launcher leaves it: `running` in the index, no summary, a worker still writing it.
    index = json.loads((sweep_dir / "sweep.json").read_text())
    index["jobs"][1]["status"] = "running"
    (sweep_dir / "sweep.json").write_text(json.dumps(index))
    (sweep_dir / "1" / "summary.json").unlink()
    writer = hold_lock(sweep_dir / "1")
    try:
        before = folder_state(sweep_dir)
        capsys.readouterr()
        assert optbench_run(*command) == 2
        err = capsys.readouterr().err
        assert f"hydra.sweep.dir={sweep_dir}: job 1 ({sweep_dir / '1'}): process {writer.pid} is writing" in err
        assert folder_state(sweep_dir) == before
    finally:
        writer.kill()
        writer.wait()
    assert optbench_run(*command) == 0
    assert "job 0 (" in capsys.readouterr().err
    assert read_summary(sweep_dir / "1")["status"] == "completed"


def test_joblib_workers_die_with_their_launcher(tmp_path):
    """SIGKILL to the process that launched a joblib sweep: its loky workers stop within seconds
    (their jobs checkpoint and end `interrupted` if they were training)."""
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "optbench", "run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "trainer.max_steps=1000000", "trainer.progress=false", "trainer.seed=0,1", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = [sweep_dir / job / ".optbench.lock" for job in ("0", "1")]
    deadline = time.time() + 240
    while time.time() < deadline and not all(lock.exists() and lock.read_text().strip() for lock in locks):
        time.sleep(0.2)
    workers = [int(lock.read_text()) for lock in locks]
    assert launcher.pid not in workers
    launcher.kill()
    launcher.wait()
    killed = time.time()
    while time.time() - killed < 10 and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), f"workers {workers} outlived their launcher"


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def interrupted_run(folder, overrides: list[str]) -> None:
    """A run killed at step 5 of 8 (checkpoints at steps 2 and 4: last.pt and previous.pt), written
    by the trainer alone (no summary), as SIGKILL leaves it."""
    trainer = Trainer(job_config([*overrides, "trainer.max_steps=8"]), folder)
    original = trainer.train_step

    def dying(*args, **kwargs):
        if trainer.step == 5:
            raise Crash
        return original(*args, **kwargs)

    trainer.train_step = dying
    with pytest.raises(Crash):
        trainer.fit()


def test_a_full_disk_stops_the_run_with_one_line_and_loses_nothing(tmp_path, monkeypatch):
    """The run folder's disk fills up (RLIMIT_FSIZE: a file may not grow past 64 kB, so the next
    checkpoint cannot be written): exit 1, one line naming the file and the error, no temporary file,
    last.pt and previous.pt as they were, summary.json `failed`; report reads the folder, and once
    there is room the same command continues the run."""
    import resource

    folder = tmp_path / "run"
    larger = [*QUICK, "model.hidden=[256]"]  # checkpoints of ~230 kB: the next one does not fit
    interrupted_run(folder, larger)
    checkpoints = {p.name: p.read_bytes() for p in (folder / "checkpoints").iterdir()}
    assert set(checkpoints) == {"last.pt", "previous.pt", "best.pt"}
    command = ["run", *larger, "trainer.max_steps=8", f"hydra.run.dir={folder}", "trainer.resume=auto"]
    def full_disk() -> None:  # in the child: no file may grow past 64 kB (Python ignores SIGXFSZ: EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, resource.RLIM_INFINITY))

    full = subprocess.run([sys.executable, "-m", "optbench", *command], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=full_disk)
    assert full.returncode == 1, full.stderr
    (line,) = full.stderr.splitlines()  # the first checkpoint written after the resume fails (best.pt)
    written = re.fullmatch(r"optbench: error: \[Errno 27\] File too large: '(.*)'; the run stopped \(summary.json: "
                           r"failed, checkpoints intact\)\. Free space, then continue it: the same command with "
                           r"trainer.resume=auto\.", line)
    assert written and Path(written[1]).parent == folder / "checkpoints", line
    assert not list(folder.rglob("*.tmp"))
    assert {p.name: p.read_bytes() for p in (folder / "checkpoints").iterdir()} == checkpoints
    assert read_summary(folder) == {"status": "failed", "error": f"OSError: [Errno 27] File too large: '{written[1]}'"}
    from optbench.cli import main

    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 0
    assert "failed" in (tmp_path / "report" / "report.csv").read_text()
    monkeypatch.chdir(tmp_path)
    assert optbench_run(*command[1:]) == 0
    assert read_summary(folder)["status"] == "completed"
    assert [m["step"] for m in read_metrics(folder) if m["split"] == "train"] == [2, 4, 6, 8]


def test_a_json_file_that_cannot_be_written_is_left_as_it_was(tmp_path):
    """write_json_atomic (summary.json, sweep.json) on a full disk: the error names the file, the old
    file is intact and no temporary file is left."""
    import resource

    from optbench.run_folder import write_json_atomic

    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "interrupted"})
    before = path.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, limits[1]))  # Python ignores SIGXFSZ: writes get EFBIG
    try:
        with pytest.raises(OSError, match="File too large") as failed:
            write_json_atomic(path, {"status": "completed", "final": {"val/acc": 0.9}})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert failed.value.filename == str(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_metrics_line_cut_short_is_dropped_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    """A short write leaves half a line at the end of metrics.jsonl, and an older optbench marked
    such a run `failed`: trainer.resume=auto drops the half line (the log says so) and completes."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run"
    interrupted_run(folder, QUICK)
    with (folder / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 6, "epoch": 0.5, "ti')
    (folder / "summary.json").write_text('{"status": "failed", "error": "JSONDecodeError: Unterminated string"}')
    assert optbench_run(*QUICK, "trainer.max_steps=8", f"hydra.run.dir={folder}", "trainer.resume=auto") == 0
    assert read_summary(folder)["status"] == "completed"
    assert [m["step"] for m in read_metrics(folder) if m["split"] == "train"] == [2, 4, 6, 8]
    log = (folder / "optbench.log").read_text()
    assert f"{folder / 'metrics.jsonl'}: dropped its last line, cut short" in log


def test_a_sweep_rerun_continues_a_job_that_failed_after_a_checkpoint(tmp_path, monkeypatch, capsys):
    """A job that failed after its checkpoint (a full disk, a damaged file) is continued by a re-run
    of the sweep, not skipped forever; finished jobs are skipped."""
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    command = ["-m", *QUICK, "trainer.seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    assert optbench_run(*command) == 0
    (sweep_dir / "1" / "summary.json").write_text('{"status": "failed", "error": "OSError: [Errno 28] No space"}')
    capsys.readouterr()
    assert optbench_run(*command) == 0
    err = capsys.readouterr().err
    assert "job 0 (" in err and "completed earlier, skipped" in err and "job 1 (" not in err
    assert read_summary(sweep_dir / "1")["status"] == "completed"
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["completed", "completed"]


def test_report_skips_a_damaged_run_naming_the_file_and_reports_the_rest(tmp_path, capsys):
    from test_report import fake_run

    from optbench.cli import main

    good = fake_run(tmp_path / "runs" / "good", ["optimizer=sgd"], 0.8)
    cut = fake_run(tmp_path / "runs" / "cut", ["optimizer=adamw"], 0.9)
    garbage = fake_run(tmp_path / "runs" / "garbage", ["optimizer=lamb"], 0.7)
    partial = fake_run(tmp_path / "runs" / "partial", ["optimizer=lion"], 0.6)
    summary = (cut / "summary.json").read_bytes()
    (cut / "summary.json").write_bytes(summary[: len(summary) // 2])
    lines = (garbage / "metrics.jsonl").read_text().splitlines(keepends=True)
    (garbage / "metrics.jsonl").write_text("".join([*lines[:2], "\x00\x00garbage\n", *lines[2:]]))
    with (partial / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 5, "ep')
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"optbench: warning: {cut / 'summary.json'}: damaged, not a JSON file" in err
    assert f"The run {cut} is left out." in err
    assert f"optbench: warning: {garbage / 'metrics.jsonl'}: damaged, line 3 is not a JSON object" in err
    assert f"optbench: warning: {partial / 'metrics.jsonl'}: its last line is cut short, left out" in err
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert sorted(row["optimizer"] for row in rows) == ["lion", "sgd"]
    assert good.exists()


def test_a_checkpoint_of_another_optimizer_is_refused_before_a_run_folder_exists(tmp_path, monkeypatch, capsys):
    """torch loads AdamW's state into SGD (same number of groups): the run then died of
    `KeyError: 'momentum'`, or "completed" past max_steps with AdamW's state in SGD."""
    monkeypatch.chdir(tmp_path)
    adamw = tmp_path / "adamw"
    assert optbench_run(*QUICK, "optimizer=adamw", f"hydra.run.dir={adamw}") == 0
    last = adamw / "checkpoints" / "last.pt"
    capsys.readouterr()
    for steps in ("trainer.max_steps=8", "trainer.max_steps=2"):
        new = tmp_path / f"sgd_{steps[-1]}"
        assert optbench_run(*QUICK, "optimizer=sgd", steps, f"hydra.run.dir={new}", f"trainer.resume={last}") == 2
        err = capsys.readouterr().err
        assert "optimizer._target_ (torch.optim.AdamW -> torch.optim.SGD)" in err and f"trainer.resume={last}" in err
        assert "Traceback" not in err and not new.exists()
    interrupted = tmp_path / "interrupted"
    interrupted_run(interrupted, ["model.hidden=[16]", "optimizer=adamw", "trainer.progress=false",
                                  "trainer.tensorboard=false", "trainer.checkpoint_every=2"])
    before = folder_state(interrupted)
    assert optbench_run("model.hidden=[16]", "optimizer=lion", "trainer.max_steps=8", "trainer.progress=false",
                        "trainer.tensorboard=false", "trainer.checkpoint_every=2",
                        f"hydra.run.dir={interrupted}", "trainer.resume=auto") == 2
    assert "optimizer._target_ (torch.optim.AdamW -> optbench.optim.Lion)" in capsys.readouterr().err
    assert folder_state(interrupted) == before


def test_report_on_one_run_leaves_its_folder_as_it_was(tmp_path, monkeypatch, capsys):
    """Without --out, the report of one finished run goes to outputs/report/DATE/TIME, not into the
    run's folder: no command modifies a finished run. (A folder above runs, such as a sweep's, still
    gets FOLDER/report: test_compare.py reports a compare folder so.)"""
    from optbench.cli import main

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert optbench_run(*QUICK, f"hydra.run.dir={run}") == 0
    before = folder_state(run)
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert folder_state(run) == before
    (written,) = [Path(line.removeprefix("wrote ")) for line in capsys.readouterr().out.splitlines()
                  if line.endswith("report.csv")]
    assert written.parts[:2] == ("outputs", "report") and written.is_file()


def tensors(state) -> list[torch.Tensor]:
    """Every tensor in a loaded checkpoint, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else []
    return [t for value in values for t in tensors(value)]


def flip_tensor_bytes(path: Path) -> str:
    """Flip four bytes in the middle of the largest tensor stored in the checkpoint at `path` (its
    data, not the zip's headers or directory), as a bad sector or a bit flip would; the member's name."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        member = max((m for m in archive.infolist() if "/data/" in m.filename), key=lambda m: m.file_size)
    data = bytearray(path.read_bytes())
    header = member.header_offset  # a local header: 30 bytes, then the name and the extra field
    name_length, extra_length = (int.from_bytes(data[header + i: header + i + 2], "little") for i in (26, 28))
    middle = header + 30 + name_length + extra_length + member.file_size // 2
    data[middle: middle + 4] = bytes(b ^ 0xFF for b in data[middle: middle + 4])
    path.write_bytes(bytes(data))
    return member.filename


def test_a_checkpoint_with_flipped_tensor_bytes_is_damaged_not_loaded(tmp_path, monkeypatch, capsys):
    """torch.load does not check the CRC-32s of its zip archive: a tensor's flipped bytes load as
    wrong numbers. optbench checks them: an explicit trainer.resume is refused (exit 2, the member
    named, no folder made); trainer.resume=auto falls back to previous.pt and ends where an
    uninterrupted run ends."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run"
    interrupted_run(folder, QUICK)
    last = folder / "checkpoints" / "last.pt"
    intact = tensors(torch.load(last, weights_only=True))
    member = flip_tensor_bytes(last)
    flipped = tensors(torch.load(last, weights_only=True))  # torch loads it without a word
    assert sum(not torch.equal(a, b) for a, b in zip(intact, flipped)) == 1
    capsys.readouterr()
    new = tmp_path / "new"
    assert optbench_run(*QUICK, "trainer.max_steps=8", f"hydra.run.dir={new}", f"trainer.resume={last}") == 2
    err = capsys.readouterr().err
    assert (f"trainer.resume={last}: not a readable optbench checkpoint: the file is damaged: {member} inside it "
            f"fails its checksum") in err
    assert "Traceback" not in err and not new.exists()
    assert optbench_run(*QUICK, "trainer.max_steps=8", f"hydra.run.dir={folder}", "trainer.resume=auto") == 0
    assert read_summary(folder)["status"] == "completed"
    assert [m["step"] for m in read_metrics(folder) if m["split"] == "train"] == [2, 4, 6, 8]
    whole = tmp_path / "whole"
    assert optbench_run(*QUICK, "trainer.max_steps=8", f"hydra.run.dir={whole}") == 0
    resumed = torch.load(last, weights_only=True)["model"]
    expected = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


def on_a_full_disk(command: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    """`optbench COMMAND` in a process whose files may not grow past `limit` bytes, as on a disk
    that fills up (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write gets EFBIG)."""
    import resource

    def full_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "optbench", *command], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=full_disk)


def test_hydra_files_that_cannot_be_written_stop_the_run_with_one_line(tmp_path, monkeypatch):
    """Hydra's .hydra/ files on a full disk (here when a run killed after its last checkpoint is
    resumed): exit 1, one line naming the file, the old .hydra/ files whole (written atomically),
    no temporary file; once there is room the same command runs."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run"
    assert optbench_run(*QUICK, f"hydra.run.dir={folder}") == 0
    (folder / "summary.json").unlink()  # as a run killed after its last checkpoint leaves it
    kept = {p: p.read_bytes() for p in [*(folder / ".hydra").iterdir(), *(folder / "checkpoints").iterdir()]}
    command = ["run", *QUICK, f"hydra.run.dir={folder}", "trainer.resume=auto"]
    full = on_a_full_disk(command, tmp_path, limit=200)  # the lock file fits; config.yaml does not
    assert full.returncode == 1, full.stderr
    assert full.stderr.splitlines() == [
        f"optbench: error: [Errno 27] File too large: '{folder / '.hydra' / 'config.yaml'}'; the run did not start "
        f"(Hydra's .hydra/ files could not be written). Free space, then run the same command again."]
    assert {p: p.read_bytes() for p in kept} == kept
    assert not list(folder.rglob("*.tmp")) and not (folder / "summary.json").exists()
    assert optbench_run(*command[1:]) == 0
    assert read_summary(folder)["status"] == "completed"


def test_a_tensorboard_file_that_cannot_be_written_is_named(tmp_path):
    """On a full disk where TensorBoard's event file fills first, the run stops with one line naming
    that file (no traceback), and summary.json says the same."""
    folder = tmp_path / "run"
    # Diagnostics every step: TensorBoard's file grows twice as fast as any other and fills first.
    command = ["run", "model.hidden=[16]", "trainer.max_steps=400", "trainer.log_every=1",
               "trainer.diagnostics_every=1", "trainer.eval_every=400", "trainer.checkpoint_every=400",
               "trainer.progress=false", f"hydra.run.dir={folder}"]
    full = on_a_full_disk(command, tmp_path, limit=24_000)
    assert full.returncode == 1, full.stderr
    (line,) = full.stderr.splitlines()
    named = re.fullmatch(r"optbench: error: \[Errno 27\] File too large: '(.*)'; the run stopped .*", line)
    assert named, line
    event_file = Path(named[1])
    assert event_file.parent.parent == folder / "tb" and event_file.name.startswith("events.out.tfevents.")
    assert event_file.stat().st_size == 24_000  # the file that filled up
    assert read_summary(folder) == {"status": "failed", "error": f"OSError: [Errno 27] File too large: '{event_file}'"}
