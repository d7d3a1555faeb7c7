"""Early stopping (`trainer.early_stopping.patience`, `min_delta`): the run ends `completed` with the
reason in summary.json, a resume keeps the patience counter, a GAN stops the same way, and a
setting that could never stop the run is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from optbench.commands.run import run
from optbench.config import job_config
from optbench.gan_trainer import GANTrainer, trainer_class
from optbench.trainer import Trainer

QUIET = ["trainer.progress=false", "trainer.tensorboard=false", "trainer.diagnostics_every=null"]
# acc is at most 1: with min_delta 1 no evaluation after the first one ever improves.
NEVER_IMPROVES = ["trainer.eval_every=2", "trainer.early_stopping.min_delta=1.0"]


def test_a_run_stops_after_patience_evaluations_without_improvement(tmp_path):
    cfg = job_config([*QUIET, *NEVER_IMPROVES, "trainer.max_steps=40", "trainer.early_stopping.patience=3"])
    summary = Trainer(cfg, tmp_path).fit()
    # Evaluations at 2 (the best), then 4, 6, 8 without improvement: stopped at step 8.
    assert summary["status"] == "completed" and summary["steps"] == 8
    stopping = summary["early_stopping"]
    assert stopping["stopped_early"] is True and stopping["stopped_at"] == 8
    assert stopping["metric"] == "val/acc" and stopping["best_step"] == 2 and stopping["patience"] == 3
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [line for line in lines if line["split"] == "val"]
    assert [line["step"] for line in val] == [2, 4, 6, 8]
    assert stopping["best"] == val[0]["acc"]
    assert [line["step"] for line in lines if line["split"] == "train"][-1] == 8  # its last train line
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["early_stopping"]["reason"].startswith("val/acc did not improve on its best")
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["progress"]["step"] == 8


def test_improvements_within_min_delta_do_not_reset_patience_and_min_mode_is_followed(tmp_path):
    """monitor=loss, mode min, min_delta 0: a falling loss keeps the run going to its end."""
    cfg = job_config([*QUIET, "trainer.eval_every=2", "trainer.max_steps=8", "trainer.monitor=loss",
                      "trainer.monitor_mode=min", "trainer.early_stopping.patience=1"])
    summary = Trainer(cfg, tmp_path).fit()
    assert summary["steps"] == 8 and summary["early_stopping"]["stopped_early"] is False
    assert summary["early_stopping"]["best_step"] == 8  # each evaluation's loss was lower


def test_resume_keeps_the_patience_counter(tmp_path):
    first = job_config([*QUIET, *NEVER_IMPROVES, "trainer.max_steps=4", "trainer.early_stopping.patience=3"])
    assert Trainer(first, tmp_path / "a").fit()["steps"] == 4  # evaluations at 2 (best) and 4: one waited
    checkpoint = tmp_path / "a" / "checkpoints" / "last.pt"
    assert torch.load(checkpoint, weights_only=True)["progress"]["early_stopping"]["waited"] == 1
    resumed = job_config([*QUIET, *NEVER_IMPROVES, "trainer.max_steps=40", "trainer.early_stopping.patience=3",
                          f"trainer.resume={checkpoint}"])
    summary = Trainer(resumed, tmp_path / "b").fit()
    # Two more evaluations (6, 8) make three without improvement; a fresh counter would run to 12.
    assert summary["steps"] == 8 and summary["early_stopping"]["best_step"] == 2


def test_a_gan_stops_early_too(tmp_path):
    cfg = job_config([*QUIET, "model=gan_ring", "data=ring", "trainer.monitor=modes", "trainer.eval_every=2",
                      "trainer.max_steps=40", "trainer.early_stopping.patience=2",
                      "trainer.early_stopping.min_delta=100"])
    trainer = trainer_class(cfg)(cfg, tmp_path)
    assert isinstance(trainer, GANTrainer)  # its own train step, the same loop and evaluations
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["early_stopping"]["metric"] == "val/modes" and summary["early_stopping"]["stopped_early"]


def test_early_stopping_that_could_never_stop_the_run_is_refused(tmp_path, capsys):
    cases = {
        # One epoch of the digits is 12 steps: a 5-step run evaluates only at its end.
        "trainer.max_steps=5": "the run evaluates only at its end (once an epoch, 12 steps, in a run of 5 steps)",
        "trainer.max_steps=10 trainer.eval_every=10": "the run evaluates only at its end (trainer.eval_every=10",
        "data=least_squares model=linear trainer.max_steps=10 trainer.eval_every=2":
            "trainer.monitor='acc' is never logged (this workload's evaluation logs loss)",
    }
    for overrides, message in cases.items():
        folder = tmp_path / "run"
        code = run([*overrides.split(), "trainer.early_stopping.patience=2", f"hydra.run.dir={folder}"])
        err = capsys.readouterr().err
        assert code == 2 and "trainer.early_stopping.patience=2: " + message in err, err
        assert "Traceback" not in err and not folder.exists()


def test_lr_find_says_it_does_not_use_early_stopping_or_mlflow():
    from optbench.commands.lr_find import unused_settings

    cfg = job_config([*QUIET, "trainer.max_steps=10", "trainer.eval_every=2", "trainer.early_stopping.patience=2",
                      "trainer.mlflow=true"])
    unused = unused_settings(Trainer(cfg, Path("unused")))
    assert {"trainer.early_stopping.patience", "trainer.mlflow"} <= unused.keys()
