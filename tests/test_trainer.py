"""The trainer in-process: exact resume and the step/epoch bookkeeping."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from optbench.config import job_config
from optbench.trainer import Trainer


def make(overrides: list[str], run_dir) -> Trainer:
    cfg = job_config(["trainer.progress=false", "trainer.tensorboard=false",
                      "trainer.deterministic=true", *overrides])
    return Trainer(cfg, run_dir)


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_total_steps_from_epochs_and_accumulation(tmp_path):
    # 1,438 training digits in batches of 128 = 12 micro-batches an epoch; groups of 5 -> 3 steps.
    trainer = make(["trainer.epochs=2", "trainer.accumulation_steps=5"], tmp_path)
    assert trainer.data.batches_per_epoch == 12
    assert trainer.steps_per_epoch == 3
    assert trainer.total_steps == 6
    assert make(["trainer.max_steps=7"], tmp_path / "b").total_steps == 7


@pytest.mark.parametrize("stop_at", [5, 12])  # mid-epoch, and exactly at an epoch's end
def test_interrupted_run_resumes_bitwise(tmp_path, monkeypatch, stop_at):
    common = ["trainer.max_steps=20", "scheduler=warmup_cosine", "trainer.log_every=3"]
    whole = make(common, tmp_path / "whole")
    assert whole.fit()["status"] == "completed"

    interrupted = make(common, tmp_path / "split")
    original = Trainer.train_step

    def stop(self, *args, **kwargs):  # SIGTERM arrives during optimizer step `stop_at`
        if self.step == stop_at - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", stop)
    summary = interrupted.fit()
    assert summary["status"] == "interrupted" and summary["steps"] == stop_at  # finished that step
    monkeypatch.setattr(Trainer, "train_step", original)

    resumed = make([*common, "trainer.resume=auto"], tmp_path / "split")
    summary = resumed.fit()
    assert summary["status"] == "completed" and summary["steps"] == 20
    for a, b in zip(params(whole), params(resumed)):
        assert torch.equal(a, b)
