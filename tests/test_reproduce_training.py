"""The training-practice claims of `optbench reproduce` (8 Sophia, 13 clipping, 18 GAN): each rule on
constructed numbers, held and not held, and the update size read back from diagnostics.jsonl
against the update SGD really made."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from optbench.commands.reproduce import training as tr
from optbench.commands.reproduce.claim import listed
from optbench.diagnostics import Diagnostics
from optbench.finished_runs import Run


def run_with(**fields) -> Run:  # type: ignore[no-untyped-def]
    return Run(Path("run"), {}, fields.get("summary", {"status": "completed"}), fields.get("metrics", []),
               fields.get("diagnostics", []))


# --------------------------------------------------------------------------- claim 8

def test_sophia_twice_as_fast_holds():
    # AdamW's median 300 steps (a seed that never got there is the slowest), Sophia's 150: 2x.
    assert tr.speedup([300, None, 280], [150, 140, 200]) == pytest.approx(2.0)
    assert tr.speedup([300, None, 280], [150, 140, 200]) >= tr.SPEEDUP


def test_sophia_slower_or_never_does_not_hold():
    assert tr.speedup([300, 320, 280], [200, 190, 210]) == pytest.approx(1.5)  # faster, but not "about 2x"
    assert tr.speedup([360, None, 380], [None, None, None]) == 0.0  # Sophia never reached AdamW's loss
    assert tr.speedup([360, None, 380], [100, None, None]) == 0.0  # a median that never got there


def test_best_lrs_reads_the_grid():
    from optbench.finished_runs import RankingMetric

    def run(name: str, lr: float, loss: float) -> Run:
        return Run(Path(f"{name}{lr}"), {"optimizer": name, "optimizer.lr": str(lr)},
                   {"status": "completed", "best": {"val/loss": loss}}, [], [])

    grid = [run("adamw", 1e-3, 2.0), run("adamw", 1e-2, 1.5), run("sophia", 1e-3, 1.9), run("sophia", 1e-2, 2.1)]
    assert tr.best_lrs(grid, RankingMetric("val/loss", maximize=False)) == {"adamw": 1e-2, "sophia": 1e-3}


# --------------------------------------------------------------------------- claim 13

LR = 20.0


def norms(pre: list[float], post: list[float] | None = None, updates: list[float] | None = None,
          completed: bool = True) -> tr.Norms:
    """A clipped run's norms where `post` and `updates` are not given: pre-clip norms clipped to 1."""
    post = [min(g, tr.CLIP) for g in pre] if post is None else post
    return tr.Norms(completed, pre, post, [LR * g for g in post] if updates is None else updates)


def test_clipping_holds_when_every_update_is_bounded_and_unclipped_explodes():
    clipped = norms([0.5, 6.2, 0.9], post=[0.5, 1.0000001, 0.9])  # float32 rounding at the clip
    unclipped = tr.Norms(True, [0.5, 48.3, 0.4], [], [10.0, 966.0, 8.0])
    assert tr.bounded(clipped, LR) and tr.exploded(unclipped)
    assert tr.clipping_holds([clipped, clipped], [unclipped, unclipped], LR)


def test_clipping_fails_on_any_step_over_the_bound():
    unclipped = tr.Norms(True, [48.3], [], [966.0])
    over_clip = norms([6.2], post=[1.01])
    over_update = norms([6.2], updates=[LR * 1.01])
    never_clipped = norms([0.5, 0.9])  # bounded, but clipping never acted: it shows nothing
    nan_update = norms([6.2], updates=[math.nan])
    diverged = norms([6.2], completed=False)
    for clipped in (over_clip, over_update, never_clipped, nan_update, diverged):
        assert not tr.clipping_holds([clipped], [unclipped], LR)


def test_no_explosion_without_clipping_fails_the_rule():
    calm = tr.Norms(True, [0.5, 9.9, 0.4], [], [10.0, 198.0, 8.0])  # just under 10x the clip
    assert not tr.exploded(calm)
    assert not tr.clipping_holds([norms([6.2])], [calm], LR)
    assert tr.exploded(tr.Norms(False, [0.5, math.nan], [], []))  # a non-finite loss is an explosion too


def test_update_norms_is_the_update_sgd_made():
    """The whole update's norm as read back from a diagnostics record equals lr x the clipped
    gradient's norm, as plain SGD makes it (float64)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.7)
    diagnostics = Diagnostics(model, optimizer, every=1)
    model(torch.randn(8, 6, dtype=torch.float64)).pow(2).sum().mul(50).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tr.CLIP)
    assert grad_norm > tr.CLIP  # the clip acted
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()  # clip x (1 - ~1e-6)
    diagnostics.before_step(1)
    optimizer.step()
    record = {"step": 1, **diagnostics.after_step()}
    assert tr.update_norms(run_with(diagnostics=[record])) == {1: pytest.approx(0.7 * clipped, rel=1e-12)}


def test_norms_of_a_run_reads_metrics_and_diagnostics():
    metrics = [{"step": 1, "split": "train", "loss": 5.0, "grad_norm": 3.0, "grad_norm_post_clip": 1.0},
               {"step": 2, "split": "train", "loss": 4.0, "grad_norm": 0.5, "grad_norm_post_clip": 0.5},
               {"step": 2, "split": "val", "loss": 4.5}]
    diagnostics = [{"step": 1, "weight_norm": {"w": 10.0, "b": 2.0}, "update_ratio": {"w": 0.6, "b": 4.0}}]
    found = tr.Norms.of(run_with(metrics=metrics, diagnostics=diagnostics))
    assert (found.pre, found.post, found.completed) == ([3.0, 0.5], [1.0, 0.5], True)
    assert found.updates == [pytest.approx(10.0)]  # sqrt(6^2 + 8^2)


# --------------------------------------------------------------------------- claim 18

def test_gan_stable_runs_hold():
    assert tr.stable(True, [0.69, 1.39, 1.7], target_met=True)
    assert tr.gan_holds([True, True, True], [False, False, False])
    assert tr.gan_holds([True, True, True], [True, True, True])  # "at least as stable"


@pytest.mark.parametrize("completed, losses, met", [
    (False, [0.7, 1.4], True),  # diverged
    (True, [0.7, 5.2], True),  # one network won outright
    (True, [0.7, math.nan], True),
    (True, [0.7, 1.4], False),  # modes collapsed below the target
])
def test_gan_unstable_runs(completed, losses, met):
    assert not tr.stable(completed, losses, met)


def test_gan_rule_fails_on_one_unstable_seed():
    assert not tr.gan_holds([True, False, True], [False, False, False])


def test_run_stability_reads_the_workloads_target():
    metrics = [{"step": 10, "split": "train", "loss": 0.9, "d_loss": 1.3},
               {"step": 20, "split": "train", "loss": 1.1, "d_loss": 1.2}]

    def run(modes: float) -> Run:
        return run_with(metrics=metrics, summary={"status": "completed", "final": {"val/modes": modes, "val/hq": 0.8},
                                                  "config": {"data": {"target": "val/modes >= 7"}}})

    assert tr.run_stability(run(7.0))["stable"] and tr.run_stability(run(7.0))["max_loss"] == 1.3
    assert not tr.run_stability(run(6.0))["stable"]


def test_listed():
    assert listed([1.23456, math.nan, None, 3], 3) == "1.23, n/a, n/a, 3"
