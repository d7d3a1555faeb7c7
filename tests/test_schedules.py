"""Exactness and resume of every schedule, value by value over a run.

Each of optbench's schedules is built from its real config (`scheduler=NAME` plus overrides) on
an optimizer with several parameter groups of different base LRs, stepped as the trainer steps
it, and compared with torch's own scheduler where torch has one (one torch scheduler per group,
since torch's floors are absolute) or with the chapter's closed form otherwise.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from optbench.build import build_scheduler
from optbench.config import compose
from optbench.paths import configs_dir

BASE_LRS = [0.1, 0.01, 0.3]  # three groups, three scales
TOTAL = 600
TOL = 1e-12


def make_optimizer(lrs: list[float], kind: str = "sgd") -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr, "name": f"g{i}"}
              for i, lr in enumerate(lrs)]
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lrs[0], betas=(0.9, 0.999))
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def ours(name: str, *overrides: str, total: int = TOTAL, kind: str = "sgd", lrs: list[float] = BASE_LRS):
    """optbench's scheduler from `scheduler=name` and overrides, on a fresh optimizer."""
    cfg = compose([f"scheduler={name}", f"trainer.max_steps={total}", *overrides])
    return build_scheduler(cfg.scheduler, make_optimizer(lrs, kind), total, 50, base_lr=lrs[0])


def run(scheduler, steps: int, metrics: list[float] | None = None, every: int = 1) -> list[list[float]]:
    """Per step, every group's LR, then every group's momentum (beta1), that the step uses; the
    scheduler stepped as the trainer steps it. With `metrics`, an evaluation after every `every`
    steps reports the next value as the validation loss.
    """
    optimizer = scheduler.optimizer
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)  # torch's own
    seen, evaluations = [], iter(metrics or [])
    for step in range(steps):
        groups = optimizer.param_groups
        momenta = [g["betas"][0] if "betas" in g else g["momentum"] for g in groups]
        seen.append([g["lr"] for g in groups] + momenta)
        optimizer.step()  # no gradients: nothing changes, but torch's step-order check is satisfied
        if not plateau:
            scheduler.step()
        if metrics is not None and (step + 1) % every == 0:
            value = next(evaluations)
            if plateau:
                scheduler.step(value)
            else:
                scheduler.observe({"loss": value, "acc": 0.0})
    return seen


def lrs_only(values: list[list[float]], groups: int = 3) -> list[list[float]]:
    return [row[:groups] for row in values]


def per_group_torch(make, steps: int, lrs: list[float] = BASE_LRS, kind: str = "sgd", **run_kwargs):
    """torch's scheduler built per group (`make(optimizer, base_lr)`), values merged by column."""
    columns = [run(make(make_optimizer([lr], kind), lr), steps, **run_kwargs) for lr in lrs]
    return [[col[i][j] for j in range(2) for col in columns] for i in range(steps)]


def assert_close(actual: list[list[float]], expected: list[list[float]]) -> None:
    assert len(actual) == len(expected)
    for step, (a_row, e_row) in enumerate(zip(actual, expected)):
        for a, e in zip(a_row, e_row, strict=True):
            if a != e:  # equal values (zeros included) need no division
                error = abs(a - e) / max(abs(a), abs(e))
                assert error <= TOL, f"step {step}: {a!r} vs {e!r} (relative error {error:.2e})"


def torch_shifted(make, warmup: int, steps: int, lrs: list[float] = BASE_LRS) -> list[list[float]]:
    """A linear warmup of `warmup` steps, then torch's scheduler started afresh."""
    after = lrs_only(per_group_torch(make, steps - warmup, lrs), len(lrs))
    ramp = [[lr * s / warmup for lr in lrs] for s in range(warmup)]
    return ramp + after


# --------------------------------------------------------------------- against torch

TORCH_CASES = {
    "step": (["scheduler.step_size=70", "scheduler.gamma=0.5"],
             lambda o, lr: torch.optim.lr_scheduler.StepLR(o, step_size=70, gamma=0.5)),
    "step_epochs": (["scheduler=step", "scheduler.step_size=1.5ep", "scheduler.gamma=0.3"],  # 1.5 x 50 steps
                    lambda o, lr: torch.optim.lr_scheduler.StepLR(o, step_size=75, gamma=0.3)),
    "multistep": (["scheduler.milestones=[100,250,0.75]"],  # 0.75 of 600 = step 450
                  lambda o, lr: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[100, 250, 450], gamma=0.1)),
    "exponential": (["scheduler.gamma=0.99"],
                    lambda o, lr: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.99)),
    "cosine": (["scheduler.min_lr_ratio=0.05"],
               lambda o, lr: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL, eta_min=0.05 * lr)),
    "cosine_eta_min": (["scheduler=cosine", "scheduler.eta_min=1e-3"],  # the floor of a group at optimizer.lr
                       lambda o, lr: torch.optim.lr_scheduler.CosineAnnealingLR(
                           o, T_max=TOTAL, eta_min=1e-3 * lr / BASE_LRS[0])),
    "cosine_short": (["scheduler=cosine", "scheduler.T_max=200"],  # rises again past T_max, as torch's
                     lambda o, lr: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=200)),
    "cosine_restarts": (["scheduler.T_0=50", "scheduler.T_mult=2", "scheduler.min_lr_ratio=0.01"],
                        lambda o, lr: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                            o, T_0=50, T_mult=2, eta_min=0.01 * lr)),
    "cosine_restarts_1": (["scheduler=cosine_restarts", "scheduler.T_0=0.1", "scheduler.T_mult=1"],
                          lambda o, lr: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=60)),
    "polynomial": (["scheduler.warmup=0", "scheduler.power=2.0"],
                   lambda o, lr: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=TOTAL, power=2.0)),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch_scheduler(case):
    overrides, make = TORCH_CASES[case]
    name = case if not overrides[0].startswith("scheduler=") else overrides[0].split("=")[1]
    actual = lrs_only(run(ours(name, *[o for o in overrides if not o.startswith("scheduler=")]), TOTAL))
    assert_close(actual, lrs_only(per_group_torch(make, TOTAL)))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("settings", [
    {"anneal_strategy": "cos", "three_phase": False, "pct_start": 0.3},
    {"anneal_strategy": "linear", "three_phase": False, "pct_start": 0.25},
    {"anneal_strategy": "cos", "three_phase": True, "pct_start": 0.4},
])
def test_onecycle_lr_and_momentum_match_torch(settings, kind):
    overrides = [f"scheduler.{k}={str(v).lower()}" for k, v in settings.items()]
    overrides += ["scheduler.div_factor=10", "scheduler.final_div_factor=100",
                  "scheduler.base_momentum=0.8", "scheduler.max_momentum=0.9"]
    actual = run(ours("onecycle", *overrides, kind=kind), TOTAL)

    def make(optimizer, lr):
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=TOTAL, div_factor=10, final_div_factor=100,
            base_momentum=0.8, max_momentum=0.9, **settings)

    expected = per_group_torch(make, TOTAL, kind=kind)
    assert_close(actual, expected)
    assert {row[3] for row in actual} != {0.9}  # the momentum really moved


def test_warmup_in_front_of_a_torch_schedule():
    actual = lrs_only(run(ours("step", "scheduler.step_size=70", "scheduler.warmup=40"), TOTAL))
    def make(optimizer, lr):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=70, gamma=0.1)

    expected = torch_shifted(make, 40, TOTAL)
    assert_close(actual, expected)


def test_plateau_matches_reduce_lr_on_plateau():
    # 60 evaluations, every 10 steps: improving, then a plateau, then noise.
    metrics = [1.0 / (k + 1) for k in range(15)] + [0.07] * 20 + [0.07 + 0.01 * math.sin(k) for k in range(25)]
    overrides = ["scheduler.factor=0.5", "scheduler.patience=3", "scheduler.cooldown=2",
                 "scheduler.min_lr=1e-3", "scheduler.threshold=1e-3"]
    actual = lrs_only(run(ours("plateau", *overrides), TOTAL, metrics=metrics, every=10))

    def make(optimizer, lr):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=3, cooldown=2, min_lr=1e-3 * lr / BASE_LRS[0], threshold=1e-3)

    expected = lrs_only(per_group_torch(make, TOTAL, metrics=metrics, every=10))
    assert_close(actual, expected)
    assert len({row[0] for row in actual}) >= 4  # several reductions, down to the floor
    assert min(row[0] for row in actual) == pytest.approx(1e-3)


# --------------------------------------------------------------------- against closed forms


def chapter_warmup_cosine(step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    """The chapter's WarmupCosineSchedule.lr_lambda (section 5.5)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def chapter_polynomial(step: int, warmup: int, total: int, power: float) -> float:
    """The chapter's polynomial_decay_with_warmup (section 5.7)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = (step - warmup) / (total - warmup)
    return (1 - progress) ** power


def hf_inverse_sqrt(step: int, warmup: int, timescale: int) -> float:
    """transformers' get_inverse_sqrt_schedule lambda."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    shift = timescale - warmup
    return 1.0 / math.sqrt((step + shift) / timescale)


def hf_wsd(step: int, warmup: int, stable: int, decay: int, shape: str, min_lr_ratio: float) -> float:
    """transformers' get_wsd_schedule lambda (linear warmup)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if step < warmup + stable:
        return 1.0
    progress = float(step - warmup - stable) / float(max(1, decay))
    if shape == "linear":
        value = 1.0 - progress
    elif shape == "cosine":
        value = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        value = 1.0 - math.sqrt(progress)
    return (1.0 - min_lr_ratio) * value + min_lr_ratio


CLOSED_FORMS = {
    "warmup_cosine": ([], lambda s: chapter_warmup_cosine(s, 60, TOTAL, 0.1)),
    "warmup_cosine_steps": (["scheduler=warmup_cosine", "scheduler.warmup=100", "scheduler.min_lr_ratio=0"],
                            lambda s: chapter_warmup_cosine(s, 100, TOTAL, 0.0)),
    "polynomial": ([], lambda s: chapter_polynomial(s, 60, TOTAL, 2.0)),
    "linear": (["scheduler.warmup=2ep"], lambda s: chapter_polynomial(s, 100, TOTAL, 1.0)),
    "inverse_sqrt": ([], lambda s: hf_inverse_sqrt(s, 60, 60)),
    "inverse_sqrt_timescale": (["scheduler=inverse_sqrt", "scheduler.timescale=25"],
                               lambda s: hf_inverse_sqrt(s, 60, 25)),
    "wsd": ([], lambda s: hf_wsd(s, 30, 450, 120, "1-sqrt", 0.0)),
    "wsd_cosine": (["scheduler=wsd", "scheduler.decay_shape=cosine", "scheduler.min_lr_ratio=0.1",
                    "scheduler.decay_length=200", "scheduler.warmup=0"],
                   lambda s: hf_wsd(s, 0, 400, 200, "cosine", 0.1)),
    "constant": (["scheduler.warmup=0.25"], lambda s: min(1.0, s / 150)),
}


@pytest.mark.parametrize("case", list(CLOSED_FORMS))
def test_matches_closed_form(case):
    overrides, multiplier = CLOSED_FORMS[case]
    name = overrides[0].split("=")[1] if overrides and overrides[0].startswith("scheduler=") else case
    actual = lrs_only(run(ours(name, *[o for o in overrides if not o.startswith("scheduler=")]), TOTAL))
    assert_close(actual, [[lr * multiplier(s) for lr in BASE_LRS] for s in range(TOTAL)])


# --------------------------------------------------------------------- resume


RESUME_CASES = {
    "cosine_restarts": ["scheduler.T_0=40", "scheduler.T_mult=2", "scheduler.warmup=15"],
    "onecycle": ["scheduler.pct_start=0.35"],
    "plateau": ["scheduler.patience=1", "scheduler.factor=0.5", "scheduler.cooldown=1",
                "scheduler.min_lr=1e-4"],
    "multistep": ["scheduler.milestones=[0.3,200,6ep]"],
    "wsd": [],
}


@pytest.mark.parametrize("name", list(RESUME_CASES))
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_restored_schedule_continues_identically(name, kind):
    """Stopped at step 252 (mid-cycle, mid-plateau), saved and loaded as a checkpoint is, resumed
    in a freshly built scheduler: the same values, bit for bit, as a run without the stop."""
    total, stop, every = 400, 252, 7  # an evaluation right before the stop, as the trainer checkpoints
    metrics = [0.5 - 0.01 * k if k % 9 < 4 else 0.6 for k in range(total // every)]
    overrides = RESUME_CASES[name]
    whole = run(ours(name, *overrides, total=total, kind=kind), total, metrics, every)

    first = ours(name, *overrides, total=total, kind=kind)
    head = run(first, stop, metrics, every)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as optbench loads checkpoints

    second = ours(name, *overrides, total=total, kind=kind)  # in the order the trainer restores
    second.optimizer.load_state_dict(state["optimizer"])
    second.load_state_dict(state["scheduler"])
    tail = run(second, total - stop, metrics[stop // every:], every)

    assert head + tail == whole
    assert len({tuple(row) for row in whole[stop:]}) > 1  # the schedule still changes after the stop


SCHEDULES = sorted(p.stem for p in configs_dir().joinpath("scheduler").glob("*.yaml"))


@pytest.mark.parametrize("name", SCHEDULES)
def test_resumed_with_another_length_the_schedule_is_re_planned(name, caplog):
    """A run of 200 steps resumed at step 126 as a run of 400 (`trainer.max_steps=400
    trainer.resume=auto`): from the resume on, every LR and momentum is the 400-step run's, bit
    for bit, with what the schedule learnt before the stop (plateau's reductions) kept."""
    stop, every = 126, 7  # an evaluation right before the stop, as the trainer checkpoints
    metrics = [0.5 - 0.01 * k if k % 9 < 4 else 0.6 for k in range(400 // every)]
    overrides = RESUME_CASES.get(name, [])
    whole = run(ours(name, *overrides, total=400, kind="adam"), 400, metrics, every)

    first = ours(name, *overrides, total=200, kind="adam")
    run(first, stop, metrics, every)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    longer = ours(name, *overrides, total=400, kind="adam")
    longer.optimizer.load_state_dict(state["optimizer"])
    with caplog.at_level("WARNING", logger="optbench"):
        longer.load_state_dict(state["scheduler"])
    tail = run(longer, 400 - stop, metrics[stop // every:], every)

    assert tail == whole[stop:]
    assert "planned for 200 optimizer steps and this run has 400: re-planned" in caplog.text
    if name == "plateau":
        assert longer.schedule.level < 1  # reduced before the stop, and still
