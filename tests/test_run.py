"""End-to-end: the real CLI in a subprocess, asserting on exit codes, files and their contents."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, read_metrics, read_summary, run_cli, run_dirs

CONTRACT_TB_TAGS = {
    "train/loss", "val/loss", "val/acc", "lr/no_decay", "lr/decay", "grad_norm/pre_clip", "grad_norm/post_clip",
    "throughput/samples_per_s",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run with clipping on (so post-clip norms exist), shared by the file checks."""
    workdir = tmp_path_factory.mktemp("tiny")
    result = run_cli("run", *TINY, "trainer.clip_norm=1.0", "scheduler=warmup_cosine", cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(workdir / "outputs")
    return run_dir


def test_run_folder_has_every_contract_file(tiny_run):
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "tb").glob("*/events.out.tfevents.*"))  # tb/<run name>/


def test_metrics_jsonl_lines(tiny_run):
    lines = read_metrics(tiny_run)
    train = [m for m in lines if m["split"] == "train"]
    val = [m for m in lines if m["split"] == "val"]
    assert [m["step"] for m in train] == [2, 4, 6]
    assert [m["step"] for m in val] == [3, 6]
    for m in train:
        assert {"step", "epoch", "time", "split", "loss", "lr", "grad_norm", "grad_norm_post_clip",
                "samples_per_s"} <= m.keys()
        assert m["grad_norm_post_clip"] <= 1.0 + 1e-6
    assert {"loss", "acc"} <= val[-1].keys()
    # `lr` is the rate step number `step` used: warmup over 10% of 6 steps (1 step), then cosine
    # to 10% of 1e-3; step 2 used schedule index 1, the first step after the warmup.
    assert train[0]["lr"] == pytest.approx(1e-3)
    assert train[-1]["lr"] < train[0]["lr"]


def test_summary_json(tiny_run):
    summary = read_summary(tiny_run)
    assert summary["status"] == "completed"
    assert summary["steps"] == 6
    assert summary["params"] == 67_338  # the default model=mlp_bn: 64-512-64-10 with batch norm, 8 tensors
    assert summary["optimizer_state_bytes"] == 2 * 4 * 67_338 + 4 * 8  # AdamW: 2 moments + steps
    assert {"val/loss", "val/acc", "train/loss"} <= summary["final"].keys()
    assert summary["best"]["val/acc"] >= summary["final"]["val/acc"]
    assert summary["config"]["optimizer"]["_target_"] == "torch.optim.AdamW"
    for key in ("epochs", "wall_time_s", "samples_per_s"):
        assert summary[key] > 0


def test_tensorboard_has_contract_tags(tiny_run):
    (run_tb,) = (tiny_run / "tb").iterdir()  # named after the run's overrides
    events = EventAccumulator(str(run_tb))
    events.Reload()
    assert CONTRACT_TB_TAGS <= set(events.Tags()["scalars"])


def test_checkpoint_loads_safely_and_holds_the_run_state(tiny_run):
    state = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["step"] == 6
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config"} <= state.keys()
    assert not list((tiny_run / "checkpoints").glob(".*.tmp"))  # nothing half-written left


def test_default_run_reaches_95_percent(workdir):
    """`optbench run` with no arguments: the README's first result."""
    result = run_cli("run", "trainer.progress=false", cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(workdir / "outputs")
    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert summary["final"]["val/acc"] >= 0.95
    assert summary["epochs"] == pytest.approx(20)


def test_multirun_puts_each_job_in_its_own_folder(workdir):
    result = run_cli("run", "-m", "optimizer=sgd,adamw", *TINY, cwd=workdir)
    assert result.returncode == 0, result.stderr
    jobs = run_dirs(workdir / "outputs" / "multirun")
    assert len(jobs) == 2
    targets = {read_summary(j)["config"]["optimizer"]["_target_"] for j in jobs}
    assert targets == {"torch.optim.SGD", "torch.optim.AdamW"}


def test_recipe_applies_on_top_and_stays_overridable(workdir):
    result = run_cli("run", "recipe=digits_resnet20", *TINY, "optimizer.lr=0.05", cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(workdir / "outputs")
    config = read_summary(run_dir)["config"]
    assert config["model"]["depth"] == 20
    assert config["optimizer"]["nesterov"] is True
    assert config["optimizer"]["lr"] == 0.05  # the command line wins over the recipe
    assert config["optimizer"]["weight_decay"] == 5e-4  # the recipe wins over the option's default


def test_explicit_run_dir_and_resume_auto_continue_a_run(workdir):
    run_dir = workdir / "myrun"
    first = run_cli("run", *TINY, f"hydra.run.dir={run_dir}", cwd=workdir)
    assert first.returncode == 0, first.stderr
    before = (run_dir / "metrics.jsonl").read_text()
    # The same folder again without resume: refused, and the earlier run is untouched.
    again = run_cli("run", *TINY, f"hydra.run.dir={run_dir}", cwd=workdir)
    assert again.returncode == 2
    assert "already holds a run" in again.stderr and "trainer.resume=auto" in again.stderr
    assert (run_dir / "metrics.jsonl").read_text() == before
    # With resume=auto it continues from the checkpoint (already at max_steps: nothing to train).
    resumed = run_cli("run", *TINY, f"hydra.run.dir={run_dir}", "trainer.resume=auto", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run_dir)["steps"] == 6
    steps = [m["step"] for m in read_metrics(run_dir) if m["split"] == "train"]
    assert steps == [2, 4, 6]  # no duplicated lines


def test_bad_input_through_the_real_command(workdir):
    result = run_cli("run", "optimizer=nope", "optimizer.lr=-1", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.startswith("optbench: error: optimizer=nope: no such option.")
    assert "Traceback" not in result.stderr + result.stdout
    assert not (workdir / "outputs").exists()


def test_failure_is_recorded_and_exits_1(workdir):
    # LBFGS imports and validates but its step() demands a closure: a failure inside training.
    lbfgs = ["optimizer=sgd", "optimizer._target_=torch.optim.LBFGS", "~optimizer.momentum",
             "~optimizer.weight_decay", "~optimizer.fused", "params=none"]
    result = run_cli("run", *TINY, *lbfgs, cwd=workdir)
    assert result.returncode == 1
    assert "closure" in result.stderr
    (run_dir,) = run_dirs(workdir / "outputs")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "closure" in summary["error"]


def test_a_run_of_seconds_checkpoints_once_at_its_end(workdir):
    """trainer.checkpoint_every=null checkpoints at an evaluation only a minute after the last
    checkpoint: 6 evaluations in a second write one checkpoint, at the end (and best.pt, which
    leaves previous.pt to last.pt's predecessor)."""
    result = run_cli("run", *TINY, "trainer.eval_every=1", f"hydra.run.dir={workdir / 'run'}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    checkpoints = workdir / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]
    assert torch.load(checkpoints / "last.pt", weights_only=True)["progress"]["step"] == 6


def test_a_single_run_is_composed_once_and_records_what_hydras_main_records(workdir, monkeypatch):
    """The pre-flight's config is the one that runs: Hydra's main would compose it twice more. Its
    .hydra/ files hold what Hydra's main writes (made to compose again here by choosing the run
    mode by hand, hydra.mode=RUN)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from optbench.cli import main

    composed = []
    load = ConfigLoaderImpl.load_configuration
    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration",
                        lambda *a, **k: composed.append(k.get("overrides")) or load(*a, **k))
    args = [*TINY, "optimizer.lr=0.002", "model=linear"]
    monkeypatch.chdir(workdir)  # as the second run's: Hydra records the folder it ran in
    assert main(["run", *args, f"hydra.run.dir={workdir / 'once'}"]) == 0
    assert len(composed) == 1
    result = run_cli("run", *args, "hydra.mode=RUN", f"hydra.run.dir={workdir / 'hydra'}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    once, hydra = (yaml.safe_load((workdir / name / ".hydra" / "hydra.yaml").read_text())["hydra"]
                   for name in ("once", "hydra"))
    for settings in (once, hydra):  # the folder names differ; so do their records of them
        del settings["run"], settings["runtime"]["output_dir"]
        settings["overrides"]["hydra"] = [o for o in settings["overrides"]["hydra"] if "run.dir" not in o]
    assert once == hydra
    assert once["mode"] == "RUN" and once["overrides"]["task"] == args
    for name in ("config.yaml", "overrides.yaml"):
        assert (workdir / "once" / ".hydra" / name).read_text() == (workdir / "hydra" / ".hydra" / name).read_text()
    assert "optbench][INFO] - 6 optimizer steps" in (workdir / "once" / "optbench.log").read_text()


def test_a_compiled_gans_networks_are_announced_in_the_log(caplog):
    from optbench.config import job_config
    from optbench.gan_trainer import GANTrainer

    cfg = job_config(["recipe=gan_ring", *TINY, "trainer.compile=true", "trainer.tensorboard=false"])
    with caplog.at_level(logging.INFO, logger="optbench"):
        GANTrainer(cfg, Path("unused"))  # built, not trained: nothing is compiled yet, nor written
    for name in ("generator", "discriminator"):
        assert f"the {name}: torch.compile compiles it at its first call" in caplog.text
