"""The trainer in-process: exact resume and the step/epoch bookkeeping."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from conftest import read_metrics
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


@pytest.mark.parametrize("size", [1, 5])
@pytest.mark.parametrize("start", [0, 7])
def test_batch_groups_cover_the_rest_of_the_epoch_in_order(tmp_path, size, start):
    """An epoch's micro-batches from `start` on, `size` to a group (the last one shorter), each
    group with the position after it: the same batches, in the same order, as the epoch's own."""
    from optbench.data import batch_groups

    data = make(["trainer.max_steps=1"], tmp_path).data  # 12 micro-batches an epoch
    groups = list(batch_groups(data, 3, 1, start, size))
    expected = list(data.train_batches(3, 1))[start:]
    got = [batch for group, _ in groups for batch in group]
    assert len(got) == len(expected) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                             for a, b in zip(got, expected))
    assert [len(group) for group, _ in groups] == [min(size, 12 - p) for p in range(start, 12, size)]
    assert [position for _, position in groups] == [min(p + size, 12) for p in range(start, 12, size)]


def test_the_files_hold_every_line_up_to_each_checkpoint(tmp_path, monkeypatch):
    """Train lines are flushed at most every FLUSH_INTERVAL_S (the first at once), validation lines
    at once, and the files always before a checkpoint: a run killed after it, and a resumed run,
    find every line up to the checkpoint's step in metrics.jsonl."""
    import optbench.checkpoint
    import optbench.metrics_log

    monkeypatch.setattr(optbench.metrics_log, "FLUSH_INTERVAL_S", 3600.0)  # no flush by time
    trainer = make(["trainer.max_steps=12", "trainer.log_every=2", "trainer.checkpoint_every=4",
                    "trainer.eval_every=6"], tmp_path)
    write, val_lines_on_disk, train_lines_on_disk = optbench.metrics_log.MetricsLog.write, [], {}

    def written(log, split, step, *args):
        write(log, split, step, *args)
        lines = read_metrics(tmp_path)
        if split == "val":
            val_lines_on_disk.append((lines[-1]["split"], lines[-1]["step"]))
        else:
            train_lines_on_disk[step] = [r["step"] for r in lines if r["split"] == "train"]

    monkeypatch.setattr(optbench.metrics_log.MetricsLog, "write", written)
    on_disk = {}
    save = optbench.checkpoint.save_atomic

    def saved(state, path):
        on_disk[state["progress"]["step"]] = [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"]
        save(state, path)

    monkeypatch.setattr(optbench.checkpoint, "save_atomic", saved)
    trainer.fit()
    # 6 and 12: best.pt, written at the evaluations.
    assert on_disk == {4: [2, 4], 6: [2, 4, 6], 8: [2, 4, 6, 8], 12: [2, 4, 6, 8, 10, 12]}
    assert val_lines_on_disk == [("val", 6), ("val", 12)]
    # When each train line is written: the first on disk at once, the others after the next flush.
    assert train_lines_on_disk == {2: [2], 4: [2], 6: [2, 4], 8: [2, 4, 6], 10: [2, 4, 6, 8], 12: [2, 4, 6, 8]}
