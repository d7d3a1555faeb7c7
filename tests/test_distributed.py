"""Data-parallel training through torchrun (2 processes, gloo on the CPU, one thread each):
the same training as one process with the same global batch, one run folder written once,
exact resume, gradient all-reduces only on the stepping micro-batch, FSDP2; and the bad input
(no torchrun, a world size that does not divide the batch) refused with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, read_summary, run_cli, run_dirs
from optbench.checkpoint import load
from optbench.cli import main
from optbench.config import job_config
from optbench.hparams import SESSION_FILE
from optbench.trainer import Trainer

pytestmark = pytest.mark.slow

# Several steps of the MLP on the digits with LAMB (trust ratios from the global gradient) and
# clipping (the global norm); LR scaling on, so that it is checked to be the same too. model=mlp:
# the default model's batch norm normalises each process's share of a batch by itself.
COMMON = ["model=mlp", "data.batch_size=64", "trainer.log_every=2", "trainer.eval_every=4", "trainer.progress=false",
          "trainer.deterministic=true", "scheduler=constant", "optimizer=lamb", "+optimizer.fused=false",
          "trainer.clip_norm=0.5", "optimizer.lr_scaling=linear"]
TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ARGS` (a free port of its own), one thread a process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-step 2-process run in the default (timestamped) folder under outputs/."""
    cwd = tmp_path_factory.mktemp("ddp")
    done = torchrun("-m", "optbench", "run", *COMMON, "trainer.max_steps=8", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = run_dirs(cwd / "outputs")
    assert len(folders) == 1, folders  # the ranks agreed on one folder
    return folders[0]


def test_two_processes_train_like_one_with_the_same_global_batch(ddp_run, tmp_path):
    single = Trainer(job_config([*COMMON, "trainer.max_steps=8", "trainer.tensorboard=false"]), tmp_path)
    assert single.fit()["status"] == "completed"
    ddp_state = load(ddp_run / "checkpoints" / "last.pt")
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp_state["model"][name], value, rtol=1e-6, atol=1e-6)

    summary = read_summary(ddp_run)
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert (summary["strategy"], summary["world_size"], summary["effective_batch_size"]) == ("ddp", 2, 64)
    # Logs written once, by rank 0, with the metrics of all ranks (equal to one process's).
    lines, reference = read_metrics(ddp_run), read_metrics(tmp_path)
    assert [(m["split"], m["step"]) for m in lines] == [(m["split"], m["step"]) for m in reference]
    assert all("grad_norm" in m and "clip_fraction" in m for m in reference if m["split"] == "train")
    for got, want in zip(lines, reference):
        for key in ("loss", "acc", "lr", "grad_norm", "clip_fraction"):
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5), (got, want)
    assert lines[0]["lr"] == pytest.approx(1e-3 * 64 / 256)  # linear scaling, the same as in one process
    # TensorBoard files of one process (the curves; the HParams session is a file of its own):
    # events.out.tfevents.T.HOST.PID.N in tb/<run name>/
    writers = {path.name.rsplit(".", 2)[1] for path in (ddp_run / "tb").glob("*/events.out.tfevents.*")
               if path.name != SESSION_FILE}
    assert len(writers) == 1, writers
    log = (ddp_run / "optbench.log").read_text()
    assert log.count("optimizer.lr_scaling=linear") == 1 and "2 process(es) x 32" in log
    assert sorted(p.name for p in (ddp_run / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What tests/ddp_worker.py measured inside the two processes."""
    cwd = tmp_path_factory.mktemp("worker")
    done = torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(cwd / "result.pt"), cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(cwd / "result.pt")


def test_accumulation_all_reduces_only_on_the_stepping_micro_batch(worker):
    (synced, params), (synced_every, params_every) = worker["no_sync"], worker["every_micro_batch"]
    buckets = synced_every // 12  # 4 steps of 3 micro-batches: 12 backward passes
    assert buckets >= 1 and synced_every == 12 * buckets
    assert synced == 4 * buckets  # one all-reduce per optimizer step
    for a, b in zip(params, params_every):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_stop_signal_to_one_rank_stops_both_and_the_run_resumes_exactly(worker):
    assert worker["ddp_stopped"] == ("interrupted", 3)  # rank 0 stopped with rank 1, after step 3
    # Resumed from the checkpoint (a fresh start would log step 2 twice), to the same parameters.
    assert worker["ddp_resumed_logged"] == [2, 4, 6, 8]
    for a, b in zip(worker["ddp"], worker["ddp_resumed"]):
        assert torch.equal(a, b)


def test_fsdp2_trains_like_ddp_resumes_exactly_from_sharded_checkpoints(worker):
    for a, b in zip(worker["ddp"], worker["fsdp"]):  # LAMB's trust ratios and clipping on sharded gradients
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert worker["fsdp_resumed_logged"] == [2, 4, 6, 8]
    for a, b in zip(worker["fsdp"], worker["fsdp_resumed"]):
        assert torch.equal(a, b)
    # Each rank wrote its shards through torch.distributed.checkpoint; last.pt names the folder.
    # Only the folders that last.pt and previous.pt name are kept.
    last = worker["fsdp_last"]
    assert last["model"] == {} and last["progress"]["step"] == 8
    sharded = [name for name in worker["fsdp_checkpoints"] if name.startswith("sharded-")]
    assert last["sharded"] == "sharded-00000008-0" and len(sharded) == 2 and last["sharded"] in sharded
    assert {"last.pt", "previous.pt", "best.pt"} <= set(worker["fsdp_checkpoints"])


@pytest.mark.parametrize("env, overrides, message", [
    ({}, ["trainer.strategy=ddp"], "trainer.strategy=ddp: needs several processes: set trainer.devices=N"),
    ({}, ["trainer.devices=3", "data.batch_size=128"], "data.batch_size=128: not divisible by the world size 3 (trainer.devices)"),
    ({}, ["trainer.devices=2", "trainer.strategy=none"], "trainer.strategy=none: 2 processes (trainer.devices)"),
    ({}, ["-m", "trainer.devices=2", "optimizer=sgd,adamw"], "trainer.devices=2 with -m"),
    ({}, ["trainer.strategy=fsdp"], "trainer.strategy=fsdp: needs several processes"),
    (TORCHRUN_ENV, ["data.batch_size=128"], "data.batch_size=128: not divisible by the world size 3"),
    (TORCHRUN_ENV, ["trainer.strategy=none"], "trainer.strategy=none: 3 processes (torchrun's WORLD_SIZE)"),
    (TORCHRUN_ENV, ["trainer.strategy=fsdp", "data.batch_size=126", "trainer.ema.decay=0.9"], "trainer.ema.decay"),
    (TORCHRUN_ENV, ["-m", "optimizer=sgd,adamw", "data.batch_size=126"], "-m under torchrun: a sweep's jobs"),
    # A Hessian estimated from one rank's batch, also inside a wrapper.
    (TORCHRUN_ENV, ["optimizer=sophia", "data.batch_size=126"], "its Hessian estimate comes from one process's batch"),
    (TORCHRUN_ENV, ["optimizer=lookahead", "optimizer@optimizer.inner=sophia", "data.batch_size=126"],
     "its Hessian estimate comes from one process's batch"),
    ({}, ["optimizer.lr_scaling=cubic"], "optimizer.lr_scaling='cubic': must be one of 'linear', 'sqrt' or null"),
    ({}, ["optimizer.reference_batch=0"], "optimizer.reference_batch=0: must be an integer >= 1"),
])
def test_bad_distributed_input_is_refused(env, overrides, message, tmp_path, monkeypatch, capsys):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert main(["run", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_devices_start_the_ranks_after_one_check(tmp_path):
    """`trainer.devices=2`: optbench checks the config, then starts 2 processes with torchrun."""
    done = run_cli("run", *COMMON, "trainer.max_steps=4", "trainer.devices=2", cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = run_dirs(tmp_path / "outputs")
    summary = read_summary(folder)
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["world_size"] == 2 and summary["strategy"] == "ddp"


def test_lr_scaling_sets_the_optimizers_lr_for_the_effective_batch(tmp_path):
    def lrs(*overrides: str) -> list[float]:
        """The LR of every parameter group, and the constructor's default LR (AdamW's own)."""
        trainer = Trainer(job_config(["trainer.progress=false", "trainer.tensorboard=false", *overrides]), tmp_path)
        return [g["lr"] for g in trainer.optimizer.param_groups] + [trainer.optimizer.defaults["lr"]]

    batch = ["data.batch_size=64", "trainer.accumulation_steps=2", "optimizer.lr=0.004"]  # effective 128
    assert lrs(*batch) == pytest.approx([0.004] * 3)
    assert lrs(*batch, "optimizer.lr_scaling=linear") == pytest.approx([0.002] * 3)  # x 128/256
    assert lrs(*batch, "optimizer.lr_scaling=sqrt", "optimizer.reference_batch=32") == pytest.approx([0.008] * 3)
    # Lookahead: the LR of the optimizer it wraps is the one scaled.
    wrapped = Trainer(job_config(["trainer.progress=false", "trainer.tensorboard=false", "optimizer=lookahead",
                                  "optimizer@optimizer.inner=sgd", "optimizer.inner.lr=0.1", *batch[:2],
                                  "optimizer.lr_scaling=linear"]), tmp_path)
    assert [g["lr"] for g in wrapped.optimizer.param_groups] == pytest.approx([0.05, 0.05])
