"""What the schedule claims of `optbench reproduce` compute (claims 10, 11, 12, 20): the chapter's
formulas against torch's schedulers, the shape comparison, and each rule on constructed numbers,
a case that holds and one that does not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from optbench.commands.reproduce import schedules as claims
from optbench.finished_runs import Run


def stepped(make_scheduler, steps: int, lr: float) -> list[float]:
    """torch's LR for steps 0 .. steps-1, stepped as the chapter's visualisations step it."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_the_chapter_formulas_give_the_numbers_its_comments_state():
    step = claims.step_lr(0.1, 30, 0.1)  # "Epoch 0-29: lr=0.1, Epoch 30-59: lr=0.01, Epoch 60+: lr=0.001"
    assert [step(29), step(30), step(59), step(60)] == pytest.approx([0.1, 0.01, 0.01, 0.001], rel=1e-12)
    multistep = claims.multistep_lr(0.1, [30, 80], 0.1)  # "Epoch 30-79: lr=0.01, Epoch 80+: lr=0.001"
    assert [multistep(29), multistep(79), multistep(80)] == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)
    restarts = claims.restarts_lr(1e-3, 1e-6, 10, 2, 100)  # "10 epochs, restart, 20 epochs, restart, 40 epochs"
    assert [t for t in range(1, 100) if restarts(t) > restarts(t - 1)] == [10, 30, 70]
    warmup = claims.warmup_cosine_lr(5e-4, 1000, 10000, 0.1)
    assert warmup(0) == 0 and warmup(500) == pytest.approx(2.5e-4) and warmup(1000) == pytest.approx(5e-4)
    assert warmup(10000) == pytest.approx(5e-5)  # "Decay to 10% of peak LR"
    polynomial = claims.polynomial_lr(5e-4, 1000, 10000, 2.0)
    assert polynomial(5500) == pytest.approx(5e-4 * 0.25) and polynomial(10000) == 0


@pytest.mark.parametrize("reference, make, steps, lr", [
    (claims.step_lr(0.1, 30, 0.1), lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=30, gamma=0.1), 100, 0.1),
    (claims.multistep_lr(0.1, [30, 80], 0.1),
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[30, 80], gamma=0.1), 100, 0.1),
    (claims.exponential_lr(1e-3, 0.95), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95), 100, 1e-3),
    (claims.cosine_lr(1e-3, 1e-6, 100),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=100, eta_min=1e-6), 100, 1e-3),
    (claims.restarts_lr(1e-3, 1e-6, 10, 2, 100),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-6), 100, 1e-3),
])
def test_the_chapter_formulas_are_what_its_torch_schedulers_compute(reference, make, steps, lr):
    assert claims.max_difference(stepped(make, steps, lr), reference) < 1e-9


def test_onecycle_reference_is_torch_onecycle_and_ends_at_max_lr_over_div_times_final_div():
    reference = claims.onecycle_lr(0.1, 1000)
    assert reference(0) == pytest.approx(0.1 / 25) and reference(299) == pytest.approx(0.1)
    assert reference(999) == pytest.approx(0.1 / 25 / 1e4)  # not the chapter comment's 0.1 / 1e4


def test_a_shape_that_differs_from_the_chapter_is_caught():
    reference = claims.cosine_lr(0.1, 0.0, 100)
    same = [reference(t) for t in range(100)]
    shifted = [reference(t + 1) for t in range(100)]  # one step early: an off-by-one in the clock
    assert claims.max_difference(same, reference) == 0
    assert claims.max_difference(shifted, reference) > claims.SHAPE_TOLERANCE
    assert claims.relative_difference(0.0, 0.0) == 0 and claims.relative_difference(1e-9, 0.0) == math.inf


def test_plateau_is_shown_losses_that_make_it_halve_the_lr_and_matches_torch():
    lrs = claims.plateau_lrs()
    assert lrs["optbench"] == lrs["chapter"]
    curves = {claims.PLATEAU: (lrs["optbench"], lrs["chapter"].__getitem__)}
    assert claims.reductions(curves, claims.PLATEAU) == [41, 52, 63, 74, 85, 96]
    assert lrs["chapter"][-1] == pytest.approx(1e-3 / 2**6)


def run(lr: float = 0.1, acc: list[tuple[int, float]] = (), best: float = 0.9, status: str = "completed") -> Run:
    metrics = [{"split": "val", "step": step, "time": 0.1 * step, "acc": a} for step, a in acc]
    summary = {"status": status, "best": {"val/acc": best}, "final": {"val/acc": best},
               "config": {"optimizer": {"lr": lr}}}
    return Run(Path("."), {}, summary, metrics)


def test_steps_to_target_is_the_first_evaluation_at_the_target():
    assert claims.steps_to_target(run(acc=[(3, 0.5), (6, 0.975), (9, 0.96)])) == 6
    assert claims.steps_to_target(run(acc=[(3, 0.5), (6, 0.969)])) == math.inf
    assert claims.recorded_steps([6.0, math.inf]) == [6, None]


def test_onecycle_rule():
    assert claims.onecycle_fastest({"none": [30, 36, 33], "step": [27, 30, math.inf], "onecycle": [24, 27, 21]})
    # one seed never got there: not reproduced, however fast the others
    assert not claims.onecycle_fastest({"none": [30, 36, 33], "step": [30, 30, 30], "onecycle": [9, 9, math.inf]})
    # a tie of the medians is not fewer steps
    assert not claims.onecycle_fastest({"none": [30, 36, 33], "step": [24, 27, 30], "onecycle": [21, 27, 33]})


def test_ablation_ranking_and_rule():
    final = {"none": [0.95, 0.96, 0.95], "step": [0.97, 0.98, 0.97], "cosine": [0.98, 0.98, 0.99],
             "onecycle": [0.98, 0.97, 0.97], "warmup_cosine": [0.97, 0.97, 0.98]}
    steps = {"none": [40, 44, 48], "step": [36, 36, 40], "cosine": [32, 36, 36], "onecycle": [28, 32, 36],
             "warmup_cosine": [36, 40, math.inf]}
    best, fastest = claims.ablation_ranking(final, steps)
    assert (best, fastest) == (["cosine"], ["onecycle"]) and claims.ablation_holds(best, fastest)
    steps["cosine"] = [28, 28, 32]  # cosine the fastest: the chapter's super-convergence does not hold
    best, fastest = claims.ablation_ranking(final, steps)
    assert fastest == ["cosine"] and not claims.ablation_holds(best, fastest)
    assert not claims.ablation_holds(["none"], ["onecycle"])  # no schedule the most accurate
    assert claims.ablation_holds(["step", "onecycle"], ["cosine", "onecycle"])  # ties share the place
    never = {name: [math.inf] * 3 for name in steps}  # no schedule reached the target: none is the fastest
    best, fastest = claims.ablation_ranking(final, never)
    assert fastest == [] and not claims.ablation_holds(best, fastest)


def test_lr_grid_and_the_suggestion_rule():
    grid = claims.grid_around(0.3)
    assert grid[2] == 0.3 and grid[0] == pytest.approx(0.03) and grid[-1] == pytest.approx(3.0)
    assert grid[1] == pytest.approx(0.3 / math.sqrt(10))
    runs = [run(lr, best=acc) for lr, accs in zip(grid, [[0.80, 0.82], [0.93, 0.95], [0.955, 0.955],
                                                        [0.97, 0.96], [0.5, 0.6]]) for acc in accs]
    accuracy = claims.mean_acc_by_lr(runs)
    assert accuracy[0.3] == pytest.approx(0.955) and accuracy[grid[3]] == pytest.approx(0.965)
    assert claims.suggestion_holds(accuracy, 0.3)  # 0.01 behind the best: within the margin
    runs[5].summary["best"]["val/acc"] = 0.93  # now 0.0225 behind
    assert not claims.suggestion_holds(claims.mean_acc_by_lr(runs), 0.3)
    runs[4].summary["status"] = "diverged"  # a diverged seed makes the LR a failure
    accuracy = claims.mean_acc_by_lr(runs)
    assert math.isnan(accuracy[0.3]) and not claims.suggestion_holds(accuracy, 0.3)
