"""Claims 16 and 17 (`optbench/commands/reproduce/vision.py`): the rules on constructed numbers, the
LR grid, and the training-set accuracy that the generalisation gap is made of."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_cli
from optbench.commands.reproduce import vision
from optbench.commands.reproduce.vision import ADAMW, SGD


def test_the_grids_span_three_decades_centred_on_each_recipes_lr() -> None:
    assert SGD.grid(vision.GRID_DECADES) == [0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0, 3.16]
    assert ADAMW.grid(vision.GRID_DECADES) == [3.16e-05, 1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2]
    assert SGD.job(0.0316, 2) == ["optimizer=nesterov", "optimizer.weight_decay=5e-4", "scheduler.min_lr_ratio=0.001",
                                  "optimizer.lr=0.0316", "trainer.seed=2"]


def test_robustness_is_the_width_of_the_range_in_decades() -> None:
    assert vision.robustness((1e-3, 1e-1)) == pytest.approx(2.0)
    assert vision.robustness((0.1, 0.1)) == 0.0
    assert vision.robustness(None) == 0.0  # every LR failed


def test_a_range_that_reaches_the_grid_edge_is_flagged_as_a_lower_bound() -> None:
    from optbench.commands.report import Sensitivity

    lrs = [1e-3, 1e-2, 1e-1]
    curves = {SGD: Sensitivity("optimizer=nesterov", lrs, [0.50, 0.98, 0.50]),  # best in the middle, alone
              ADAMW: Sensitivity("optimizer=adamw", lrs, [0.50, 0.97, 0.98])}  # within 5% up to the top LR
    found = vision.Sensitivities(curves, {arm: c.robust_range(True) for arm, c in curves.items()},
                                 {arm: c.best_lr(True) for arm, c in curves.items()})
    assert found.score(SGD) == 0.0 and not found.at_edge(SGD)
    assert found.score(ADAMW) == pytest.approx(1.0) and found.at_edge(ADAMW)


def test_faster_compares_median_steps_and_never_is_slowest() -> None:
    assert vision.faster([24, 30, 18], [36, 36, 42])
    assert not vision.faster([36, 36, 42], [24, 30, 18])
    assert not vision.faster([30, 30, 30], [30, 30, 30])  # a tie is not faster
    assert vision.faster([60, None, 60], [None, None, 12])  # medians 60 and never
    assert not vision.faster([None, None, 6], [100, 100, None])
    assert vision.median_steps([None, 5, None]) == math.inf


def test_smaller_gap_needs_a_significant_paired_difference_for_sgd() -> None:
    held, p, said = vision.smaller_gap([0.010, 0.012, 0.011], [0.030, 0.033, 0.031])
    assert held and said == "SGD better" and float(p) < 0.05
    held, _, said = vision.smaller_gap([0.030, 0.033, 0.031], [0.010, 0.012, 0.011])
    assert not held and said == "AdamW better"
    held, _, said = vision.smaller_gap([0.010, 0.030, 0.015], [0.020, 0.015, 0.024])  # mean favours SGD, noise
    assert not held and said == "not distinguishable"
    held, _, said = vision.smaller_gap([0.01], [0.03])  # one seed: no verdict
    assert not held and said.startswith("no verdict")


def test_train_accuracy_is_the_final_weights_on_the_whole_training_set(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from optbench.build import build_data, build_model
    from optbench.finished_runs import load_run

    folder = tmp_path / "run"
    done = run_cli("run", *TINY, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    state = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    data = build_data(OmegaConf.create(state["config"]).data)
    model = build_model(OmegaConf.create(state["config"]).model, data)
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        expected = (model(data.x_train).argmax(dim=1) == data.y_train).double().mean().item()
    assert data.num_train == 1438
    assert vision.train_accuracy(load_run(folder)) == pytest.approx(expected, abs=1e-12)
