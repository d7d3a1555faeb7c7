"""Claims of the chapter's learning-rate schedules (sections 5.1-5.8), its LR finder (6.1) and
its scheduler ablation (Exercise 2)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optbench.commands.reproduce.claim import CIFAR10_TARGET, Claim, Context, Outcome, out_of_reach, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.finished_runs import Run

SHAPE_TOLERANCE = 1e-6  # relative; both sides are float64 sums of a few terms, so any real difference is far larger
TARGET_ACC = 0.97  # the digits' own target (configs/data/digits.yaml): validation accuracy
LR_MARGIN = 0.01  # claim 12: the suggestion may trail the grid's best mean accuracy by this much (1 point)
GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)  # claim 12: decades around the suggested LR (x0.1 .. x10)
# Claim 12's range test as the chapter's 6.1 calls it: range_test(start_lr=1e-7, end_lr=1), its
# num_iter=100 and smooth_f=0.05 (the new loss's weight: an EMA factor of 0.95).
RANGE_TEST = ["--start", "1e-7", "--end", "1", "--steps", "100", "--smoothing", "0.95"]
SEEDS = [0, 1, 2]
QUIET = ["trainer.progress=false", "trainer.tensorboard=false"]


# ---- claim 10: each schedule's shape against the chapter's own formula ----------------------

Reference = Callable[[int], float]  # step -> the LR the chapter's formula or code gives


@dataclass(frozen=True)
class ChapterExample:
    """One `optbench schedules` call at the settings of one of the chapter's examples, and the
    chapter's LR for each of its curves (by the label the command gives the curve)."""

    name: str  # the command's folder
    overrides: tuple[str, ...]
    references: dict[str, tuple[str, Reference]]  # curve label -> (the chapter's name, its LR)


def step_lr(lr: float, step_size: int, gamma: float) -> Reference:
    """5.1: "Epoch 0-29: lr=0.1, Epoch 30-59: lr=0.01, Epoch 60+: lr=0.001"."""
    return lambda t: lr * gamma ** (t // step_size)


def multistep_lr(lr: float, milestones: Sequence[int], gamma: float) -> Reference:
    """5.1: "Epoch 0-29: lr=0.1, Epoch 30-79: lr=0.01, Epoch 80+: lr=0.001"."""
    return lambda t: lr * gamma ** sum(t >= m for m in milestones)


def exponential_lr(lr: float, gamma: float) -> Reference:
    """5.2: eta_t = eta_0 * gamma^t."""
    return lambda t: lr * gamma**t


def cosine_lr(lr_max: float, lr_min: float, period: int) -> Reference:
    """5.3: eta_t = eta_min + 1/2 (eta_max - eta_min)(1 + cos(t pi / T))."""
    return lambda t: lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(t / period * math.pi))


def restarts_lr(lr_max: float, lr_min: float, first: int, mult: int, steps: int) -> Reference:
    """5.3's visualize_cosine_schedule: the restart loop as the chapter writes it."""
    lrs, t, period = [], 0, first
    for _ in range(steps):
        lrs.append(lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t / period)))
        t += 1
        if t >= period:
            t, period = 0, period * mult
    return lrs.__getitem__


def warmup_cosine_lr(lr: float, warmup: int, total: int, min_ratio: float) -> Reference:
    """5.5's WarmupCosineSchedule.lr_lambda, times the base LR."""
    def at(step: int) -> float:
        if step < warmup:
            return lr * step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return at


def polynomial_lr(lr: float, warmup: int, total: int, power: float) -> Reference:
    """5.7's polynomial_decay_with_warmup, times the base LR."""
    def at(step: int) -> float:
        if step < warmup:
            return lr * step / max(1, warmup)
        return lr * (1 - (step - warmup) / (total - warmup)) ** power
    return at


def onecycle_lr(max_lr: float, total: int) -> Reference:
    """5.4: the chapter gives OneCycleLR as code, not as a formula: its `visualize_onecycle`,
    torch's OneCycleLR stepped once per optimizer step (pct_start 0.3, cos, the defaults
    div_factor 25 and final_div_factor 1e4)."""
    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=0.3,
                                                    anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs.__getitem__


def chapter_figures(smoke: bool) -> list[ChapterExample]:
    """The chapter's scheduler examples at its own hyperparameters; an epoch of the chapter is
    one step here (its schedulers step once an epoch). At smoke scale the 5.8 suite only."""
    suite = ChapterExample(
        "5.8_suite", ("scheduler=step,exponential,cosine,onecycle,warmup_cosine", "optimizer=sgd", "optimizer.lr=0.1",
                      "scheduler.min_lr_ratio=0", "trainer.max_steps=1000"), {
            "step": ("5.8 StepLR(step_size=300, gamma=0.1)", step_lr(0.1, 300, 0.1)),
            "exponential": ("5.8 ExponentialLR(gamma=0.995)", exponential_lr(0.1, 0.995)),
            "cosine": ("5.8 CosineAnnealingLR(T_max=1000)", cosine_lr(0.1, 0.0, 1000)),
            "onecycle": ("5.8 OneCycleLR(max_lr=0.1, total_steps=1000)", onecycle_lr(0.1, 1000)),
            "warmup_cosine": ("5.8 WarmupCosineSchedule(100, 1000)", warmup_cosine_lr(0.1, 100, 1000, 0.0)),
        })
    if smoke:
        return [suite]
    return [
        ChapterExample(
            "5.1_step", ("scheduler=step,multistep", "scheduler.step_size=30", "scheduler.milestones=[30,80]",
                         "optimizer=sgd", "optimizer.lr=0.1", "trainer.max_steps=100"), {
                "step": ("5.1 StepLR(step_size=30, gamma=0.1)", step_lr(0.1, 30, 0.1)),
                "multistep": ("5.1 MultiStepLR(milestones=[30, 80], gamma=0.1)", multistep_lr(0.1, [30, 80], 0.1)),
            }),
        ChapterExample(
            "5.2_exponential", ("scheduler=exponential", "scheduler.gamma=0.95", "optimizer=adam",
                                "optimizer.lr=0.001", "trainer.max_steps=100"), {
                "exponential": ("5.2 ExponentialLR(gamma=0.95)", exponential_lr(0.001, 0.95)),
            }),
        ChapterExample(
            "5.3_cosine", ("scheduler=cosine,cosine_restarts", "scheduler.eta_min=1e-6", "scheduler.T_0=10",
                           "scheduler.T_mult=2", "optimizer=adamw", "optimizer.lr=0.001", "trainer.max_steps=100"), {
                "cosine": ("5.3 CosineAnnealingLR(T_max=100, eta_min=1e-6)", cosine_lr(0.001, 1e-6, 100)),
                "cosine_restarts": ("5.3 CosineAnnealingWarmRestarts(T_0=10, T_mult=2, eta_min=1e-6)",
                                    restarts_lr(0.001, 1e-6, 10, 2, 100)),
            }),
        ChapterExample(
            "5.4_onecycle", ("scheduler=onecycle", "optimizer=momentum", "optimizer.lr=0.1",
                             "trainer.max_steps=1000"), {
                "onecycle": ("5.4 OneCycleLR(max_lr=0.1, total_steps=1000, pct_start=0.3)", onecycle_lr(0.1, 1000)),
            }),
        ChapterExample(
            "5.5_5.7_warmup", ("scheduler=warmup_cosine,polynomial", "optimizer=adamw", "optimizer.lr=5e-4",
                               "trainer.max_steps=10000"), {
                "warmup_cosine": ("5.5 WarmupCosineSchedule(1000, 10000, min_lr_ratio=0.1)",
                                  warmup_cosine_lr(5e-4, 1000, 10000, 0.1)),
                "polynomial": ("5.7 polynomial_decay_with_warmup(1000, 10000, power=2)",
                               polynomial_lr(5e-4, 1000, 10000, 2.0)),
            }),
        suite,
    ]


def relative_difference(traced: float, reference: float) -> float:
    """|traced - reference| / |reference|; a reference of 0 (a warmup's first step) must be met exactly."""
    if reference == 0:
        return 0.0 if traced == 0 else math.inf
    return abs(traced - reference) / abs(reference)


def max_difference(traced: Sequence[float], reference: Reference) -> float:
    """The largest relative difference over every step of the traced curve."""
    return max(relative_difference(lr, reference(step)) for step, lr in enumerate(traced))


# 5.6's ReduceLROnPlateau reacts to validation losses, which `optbench schedules` does not have:
# both sides are shown the same made-up losses instead, 100 epochs of them: a fall for 30
# epochs, then a plateau just above the best, with a dip of 5e-5 relative every 4th epoch (below
# the 1e-4 threshold: not an improvement), so that the LR is halved every 11 epochs from 41 on.
PLATEAU_EPOCHS = 100


def plateau_losses() -> list[float]:
    best = 1 / 31
    return [1 / (1 + e) if e <= 30 else best * (1 - 5e-5 if e % 4 == 0 else 1 + 1e-3 * (e % 3))
            for e in range(PLATEAU_EPOCHS)]


def plateau_lrs() -> dict[str, list[float]]:
    """The LR after each epoch's evaluation: optbench's `scheduler=plateau` (as a run builds it,
    optimizer=adam at 0.001) and the chapter's ReduceLROnPlateau(mode='min', factor=0.5,
    patience=10, min_lr=1e-6) on torch's Adam (its `verbose=True` only prints, and newer torch
    has dropped it)."""
    import torch

    from optbench.build import build_schedule
    from optbench.config import compose

    cfg = compose(["scheduler=plateau", "optimizer=adam", "optimizer.lr=0.001"])
    schedule = build_schedule(cfg.scheduler, PLATEAU_EPOCHS, None, 0.001)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.001)
    chapter = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=10, min_lr=1e-6)
    traced, reference = [], []
    for loss in plateau_losses():
        schedule.observe({"loss": loss})
        chapter.step(loss)
        traced.append(0.001 * schedule(0))
        reference.append(optimizer.param_groups[0]["lr"])
    return {"optbench": traced, "chapter": reference}


PLATEAU = "5.6 ReduceLROnPlateau(factor=0.5, patience=10, min_lr=1e-6)"


def reductions(curves: dict[str, tuple[list[float], Reference]], name: str) -> list[int] | None:
    """The epochs after which the LR fell (so that a match with no reduction is not taken for one)."""
    if name not in curves:
        return None
    lrs = curves[name][0]
    return [e for e in range(1, len(lrs)) if lrs[e] < lrs[e - 1]]


def schedule_shapes(ctx: Context) -> Outcome:
    from optbench.commands import schedules as command

    figures = chapter_figures(smoke=ctx.scale == "smoke")
    curves: dict[str, tuple[list[float], Reference]] = {}
    for figure in figures:
        out = ctx.command(figure.name, command.main, list(figure.overrides))
        columns = command.read_csv(out / "schedules.csv")
        for label, (name, reference) in figure.references.items():
            curves[name] = (columns[f"{label}/lr"], reference)
    if ctx.scale != "smoke":
        plateau = ctx.cached("5.6_plateau", plateau_lrs)
        curves[PLATEAU] = (plateau["optbench"], plateau["chapter"].__getitem__)
    differences = {name: max_difference(traced, reference) for name, (traced, reference) in curves.items()}
    verdicts = {name: verdict(d <= SHAPE_TOLERANCE, proxy=False) for name, d in differences.items()}
    ctx.save_figure(draw_shapes(curves), "schedule_shapes")
    off = {name: d for name, d in differences.items() if d > SHAPE_TOLERANCE}
    worst = max(differences, key=differences.__getitem__)
    final_lr = curves["5.8 OneCycleLR(max_lr=0.1, total_steps=1000)"][0][-1]
    seen = (f"{len(curves) - len(off)} of {len(curves)} schedules follow the chapter's formula or code at every step "
            f"(largest relative difference {differences[worst]:.1e}, {worst})"
            + (f"; off: {', '.join(f'{n} by {d:.2g}' for n, d in off.items())}" if off else "")
            + (f"; ReduceLROnPlateau halves the LR after epochs {', '.join(map(str, halved))} on both sides"
               if (halved := reductions(curves, PLATEAU)) else "")
            + f". OneCycle's last LR is {final_lr:.2g} = max_lr/(div_factor*final_div_factor), as the chapter's "
              f"torch code gives; its comment 'Final LR = max_lr / final_div_factor' ({0.1 / 1e4:g}) is off by "
              f"div_factor.")
    return Outcome(
        verdict=verdict(not off, proxy=False),
        seen=seen,
        workload=f"`optbench schedules` at the chapter's hyperparameters ({', '.join(f.name for f in figures)}; "
                 f"one step per chapter epoch), every step against the chapter's formula or code"
                 + ("; ReduceLROnPlateau on 100 made-up validation losses against torch's"
                    if ctx.scale != "smoke" else ""),
        figures={"max_relative_difference": differences, "verdicts": verdicts, "tolerance": SHAPE_TOLERANCE,
                 "onecycle_final_lr": final_lr, "plateau_reductions": reductions(curves, PLATEAU),
                 "not_traced": "5.7's ChainedScheduler(LinearLR, ExponentialLR): an API example with no "
                               "optbench scheduler config"},
    )


def draw_shapes(curves: dict[str, tuple[list[float], Reference]]) -> Figure:
    """One panel a schedule: optbench's traced LR (line) and the chapter's (dots)."""
    from matplotlib.figure import Figure

    columns = 4
    rows = math.ceil(len(curves) / columns)
    figure = Figure(figsize=(4 * columns, 3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (name, (traced, reference)) in zip(axes, curves.items()):
        every = max(1, len(traced) // 40)
        axis.plot(range(len(traced)), traced, linewidth=2, label="optbench schedules")
        axis.plot(range(0, len(traced), every), [reference(t) for t in range(0, len(traced), every)], ".",
                  color="C3", label="chapter")
        axis.set_title(name.split("(")[0], fontsize=9)
        axis.set_xlabel("Step")
        axis.grid(True, alpha=0.3)
    for axis in axes[len(curves):]:
        axis.set_visible(False)
    axes[0].set_ylabel("Learning Rate")
    axes[0].legend(fontsize=8)
    return figure


# ---- claims 11 and 20: OneCycle's speed and the five-schedule ablation -------------------------

def steps_to_target(run: Run, target: float = TARGET_ACC) -> float:
    """The first evaluated step with validation accuracy >= `target`; inf when never."""
    from optbench.commands.report import time_to_target
    from optbench.finished_runs import RankingMetric

    step, _ = time_to_target(run, RankingMetric("val/acc", True), target)
    return math.inf if step == "" else float(step)


def final_acc(run: Run) -> float:
    """The last evaluation's validation accuracy; NaN for a run that did not complete."""
    from optbench.finished_runs import RankingMetric

    return RankingMetric("val/acc", True).final(run) if run.status == "completed" else math.nan


def by_schedule(runs: list[Run], measure: Callable[[Run], float]) -> dict[str, list[float]]:
    """scheduler option -> the measure of its runs, in seed order."""
    found: dict[str, list[float]] = {}
    for run in runs:
        found.setdefault(run.value("scheduler"), []).append(measure(run))
    return found


def save_curves(ctx: Context, runs: list[Run], name: str) -> None:
    """The report's training curves (loss, accuracy, LR, gradient norm; seed bands), one colour a schedule."""
    from optbench.commands.report_plots import draw_curves
    from optbench.finished_runs import RankingMetric

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.value("scheduler"), []).append(run)
    ctx.save_figure(draw_curves(groups, RankingMetric("val/acc", True)), name)


def shown_steps(steps: list[float]) -> str:
    return ", ".join("never" if math.isinf(s) else str(int(s)) for s in steps)


def recorded_steps(steps: list[float]) -> list[int | None]:
    """Steps to target for claims.json: never as null (JSON has no infinity)."""
    return [None if math.isinf(s) else int(s) for s in steps]


def onecycle_fastest(steps: dict[str, list[float]]) -> bool:
    """Claim 11's rule: OneCycle reaches the target in every seed and its median steps are
    fewer than every other schedule's (never counts as infinitely many)."""
    ours = steps["onecycle"]
    return (not any(math.isinf(s) for s in ours)
            and all(statistics.median(ours) < statistics.median(v) for k, v in steps.items() if k != "onecycle"))


ONECYCLE_FULL = ("optbench run -m recipe=scheduler_ablation scheduler=none,step,onecycle trainer.seed=0,1,2 "
                 "data.root=DIR  # CIFAR-10, on a GPU; or optbench reproduce 11 scale=full data.root=DIR")
# At scale=full, claims 11 and 20 are judged on one sweep (in claim 20's folder): the chapter's
# Exercise 2 on CIFAR-10, each of the five schedules over three seeds.
CIFAR_WORKLOAD = ("recipe scheduler_ablation: ResNet-18 on CIFAR-10, SGD momentum 0.9, LR 0.1 (OneCycle's peak), "
                  "weight decay 5e-4, batch 128, 30 epochs, evaluated every epoch")
SEEDS_FULL = [0, 1, 2]


def cifar_ablation(ctx: Context, schedules: tuple[str, ...]) -> list[Run]:
    """The runs of `schedules` in the CIFAR-10 ablation shared by claims 11 and 20 (a sweep of all
    five in claim 20's folder: whichever claim runs first trains it)."""
    home = ctx.beside(next(c for c in CLAIMS if c.name == "exercise2"))
    runs = home.sweep("cifar10_runs", [[f"scheduler={name}", f"trainer.seed={seed}"]
                                       for name in ABLATION for seed in SEEDS_FULL],
                      [*ctx.on_data("scheduler_ablation"), *QUIET])
    ctx.run_folders += home.run_folders
    return [run for run in runs if run.value("scheduler") in schedules]


def onecycle_speed(ctx: Context) -> Outcome:
    schedules = ("none", "step", "onecycle")
    if ctx.scale == "full":
        if missing := ctx.missing("scheduler_ablation"):
            return out_of_reach(missing, f"{CIFAR_WORKLOAD}; 3 seeds", ONECYCLE_FULL)
        runs, target, seeds = cifar_ablation(ctx, schedules), CIFAR10_TARGET, SEEDS_FULL
        budget = max(run.summary.get("steps", 0) for run in runs)
        workload = f"{CIFAR_WORKLOAD}; constant, step (/10 every 30%) and OneCycle, {len(seeds)} seeds"
    else:
        seeds, target = ctx.pick(smoke=[0], proxy=SEEDS), TARGET_ACC
        budget = ctx.pick(smoke=6, proxy=120)
        jobs = [[f"scheduler={name}", f"trainer.seed={seed}"] for name in schedules for seed in seeds]
        runs = ctx.sweep("runs", jobs,
                         ["model=mlp", "data=digits", "optimizer=momentum", "optimizer.lr=0.1",
                          f"trainer.max_steps={budget}", "trainer.eval_every=3", *QUIET])
        workload = (f"stand-in: the MLP (2x256) on the bundled digits, SGD momentum 0.9 at LR 0.1 (OneCycle's peak), "
                    f"batch 128, {budget} steps, evaluated every 3, {len(seeds)} seed(s); constant, step (/10 every "
                    f"30%) and OneCycle (the MLP, because claim 20 runs the same three schedules on ResNet-20: a "
                    f"second network)")
    steps = by_schedule(runs, lambda run: steps_to_target(run, target))
    medians = {name: statistics.median(v) for name, v in steps.items()}
    save_curves(ctx, runs, "curves")
    names = {"none": "constant", "step": "step", "onecycle": "OneCycle"}
    return Outcome(
        verdict=verdict(onecycle_fastest(steps), proxy=ctx.scale != "full"),
        seen=(f"steps to validation accuracy >= {target} (seeds {', '.join(map(str, seeds))}; budget {budget}): "
              + "; ".join(f"{names[k]} {shown_steps(v)} (median {shown_steps([medians[k]])})"
                          for k, v in steps.items()) + "."),
        workload=workload,
        figures={"steps_to_target": {names[k]: recorded_steps(v) for k, v in steps.items()},
                 "median_steps": {names[k]: recorded_steps([v])[0] for k, v in medians.items()},
                 "target": target, "budget": budget},
        full_scale=ONECYCLE_FULL,
    )


ABLATION = ("none", "step", "cosine", "onecycle", "warmup_cosine")
EXPECTED_BEST = {"cosine", "onecycle"}  # the chapter's CNN recommendation (7.1) and its "state-of-the-art" (5.4)
ABLATION_FULL = ("optbench run -m recipe=scheduler_ablation trainer.seed=0,1,2 data.root=DIR  # CIFAR-10, on a GPU; "
                 "or optbench reproduce 20 scale=full data.root=DIR")


def ablation_ranking(final: dict[str, list[float]], steps: dict[str, list[float]]) -> tuple[list[str], list[str]]:
    """(the best schedules by median final accuracy, the fastest by median steps to target);
    ties share the place, and none is fastest when no median reached the target."""
    accuracy = {k: statistics.median(v) for k, v in final.items()}
    speed = {k: statistics.median(v) for k, v in steps.items()}
    top, fastest = max(accuracy.values()), min(speed.values())
    return ([k for k, v in accuracy.items() if v == top],
            [k for k, v in speed.items() if v == fastest and not math.isinf(v)])


def ablation_holds(best: list[str], fastest: list[str]) -> bool:
    """Claim 20's rule: a best schedule is cosine or OneCycle, and OneCycle is (or ties for) the fastest."""
    return bool(EXPECTED_BEST & set(best)) and "onecycle" in fastest


def scheduler_ablation(ctx: Context) -> Outcome:
    if ctx.scale == "full":
        if missing := ctx.missing("scheduler_ablation"):
            return out_of_reach(missing, f"{CIFAR_WORKLOAD}; the five schedules, 3 seeds", ABLATION_FULL)
        runs, target, seeds = cifar_ablation(ctx, ABLATION), CIFAR10_TARGET, SEEDS_FULL
    else:
        seeds, target = ctx.pick(smoke=[0], proxy=SEEDS), TARGET_ACC
        runs = ctx.sweep("runs", [[f"scheduler={name}", f"trainer.seed={seed}"] for name in ABLATION for seed in seeds],
                         ["recipe=digits_scheduler_ablation", *ctx.pick(smoke=["smoke=true"], proxy=[]), *QUIET])
    budget = max(r.summary.get("steps", 0) for r in runs)
    workload = (f"{CIFAR_WORKLOAD} ({budget} steps); the five schedules, {len(seeds)} seeds" if ctx.scale == "full"
                else f"stand-in: recipe digits_scheduler_ablation (ResNet-20 on the 8x8 digits, SGD momentum 0.9, LR "
                     f"0.1, weight decay 5e-4, {budget} steps, evaluated every 4), {len(seeds)} seed(s), the five "
                     f"schedules")
    final, steps = by_schedule(runs, final_acc), by_schedule(runs, lambda run: steps_to_target(run, target))
    best, fastest = ablation_ranking(final, steps)
    save_curves(ctx, runs, "curves")
    order = sorted(ABLATION, key=lambda k: -statistics.median(final[k]))
    return Outcome(
        verdict=verdict(ablation_holds(best, fastest), proxy=ctx.scale != "full"),
        seen=(f"median final validation accuracy ({len(seeds)} seed(s)): "
              + ", ".join(f"{k} {statistics.median(final[k]):.3f}" for k in order)
              + f"; best: {' = '.join(best)}. Median steps to accuracy >= {target}: "
              + ", ".join(f"{k} {shown_steps([statistics.median(steps[k])])}" for k in ABLATION)
              + f"; fastest: {' = '.join(fastest) or 'none (no median reached it)'}."),
        workload=workload,
        figures={"final_acc": final, "steps_to_target": {k: recorded_steps(v) for k, v in steps.items()},
                 "best": best, "fastest": fastest,
                 "target": target, "budget": budget},
        full_scale=ABLATION_FULL,
    )


# ---- claim 12: the LR finder's suggestion ------------------------------------------------------

def suggested_lr(ctx: Context, name: str, overrides: list[str]) -> float:
    """`optbench lr-find` on the claim's workload: the LR it suggests (steepest descent, or the
    valley for OneCycle's peak)."""
    import json

    from optbench.commands import lr_find

    out = ctx.command(name, lr_find.main, overrides)
    return float(json.loads((out / "lr_find.json").read_text())["suggested"]["optimizer.lr"])


def grid_around(lr: float) -> list[float]:
    """The suggestion and its neighbours, half a decade apart (x0.1 .. x10)."""
    return [lr if k == 0 else lr * 10**k for k in GRID]


def mean_acc_by_lr(runs: list[Run]) -> dict[float, float]:
    """LR -> mean (over seeds) best validation accuracy; a diverged seed makes it NaN (the
    report's `lr_sensitivity`)."""
    from optbench.commands.report import lr_sensitivity
    from optbench.finished_runs import LR_KEY, RankingMetric

    (curve,) = lr_sensitivity(runs, [LR_KEY], RankingMetric("val/acc", True))
    return dict(zip(curve.lrs, curve.values))


def suggestion_holds(accuracy: dict[float, float], suggestion: float) -> bool:
    """Claim 12's rule: the suggestion's mean accuracy within LR_MARGIN of the grid's best mean."""
    finite = [v for v in accuracy.values() if not math.isnan(v)]
    ours = accuracy[suggestion]
    return bool(finite) and not math.isnan(ours) and ours >= max(finite) - LR_MARGIN


def lr_finder(ctx: Context) -> Outcome:
    seeds = ctx.pick(smoke=[0], proxy=SEEDS)
    budget = ctx.pick(smoke=6, proxy=120)
    workload = ["model=mlp", "data=digits", f"trainer.max_steps={budget}", *QUIET]
    arms = {"constant": ["optimizer=sgd", "scheduler=none"], "onecycle": ["optimizer=momentum", "scheduler=onecycle"]}
    results: dict[str, dict[str, Any]] = {}
    for arm, overrides in arms.items():
        # At smoke scale a later --steps wins: 10 steps of the same range.
        suggestion = suggested_lr(ctx, f"lr_find_{arm}", [*workload, *overrides, *RANGE_TEST,
                                                           *ctx.pick(smoke=["--steps", "10"], proxy=[])])
        grid = grid_around(suggestion)
        runs = ctx.sweep(f"grid_{arm}", [[f"optimizer.lr={lr!r}", f"trainer.seed={seed}"]
                                         for lr in grid for seed in seeds], [*workload, *overrides])
        accuracy = mean_acc_by_lr(runs)
        results[arm] = {"suggested_lr": suggestion, "held": suggestion_holds(accuracy, suggestion),
                        "mean_best_acc": {f"{lr:.3g}": accuracy[lr] for lr in grid}}
    held = all(r["held"] for r in results.values())

    def line(arm: str, what: str) -> str:
        r = results[arm]
        acc, ours = r["mean_best_acc"], f"{r['suggested_lr']:.3g}"
        best = max(acc, key=lambda k: -math.inf if math.isnan(acc[k]) else acc[k])
        reached = "a seed diverged" if math.isnan(acc[ours]) else f"mean best accuracy {acc[ours]:.3f}"
        return f"{what}: suggested {ours}, {reached}, against the grid's best {acc[best]:.3f} (LR {best})"

    return Outcome(
        verdict=verdict(held, proxy=True),
        seen=f"{line('constant', 'constant LR (steepest descent)')}; {line('onecycle', 'OneCycle peak (valley)')}.",
        workload=f"stand-in: the MLP (2x256) on the bundled digits (the chapter's 6.1 example is an MLP), batch 128, "
                 f"`optbench lr-find {' '.join(RANGE_TEST)}` (the chapter's range_test settings), then "
                 f"{budget} steps, {len(seeds)} seed(s); plain SGD at a constant LR, and SGD momentum 0.9 with "
                 f"OneCycle (the Exercise 2 bonus); grids x0.1, x0.32, x1, x3.2, x10 around each suggestion",
        figures={arm: r for arm, r in results.items()} | {"margin": LR_MARGIN},
    )


CLAIMS = [
    Claim(10, "schedule_shapes", "5.1-5.8",
          "StepLR, MultiStepLR, ExponentialLR (eta_t = eta_0 gamma^t), CosineAnnealingLR (eta_min + 1/2 (eta_max - "
          "eta_min)(1 + cos(t pi / T))), warm restarts (10, 20, 40, ... epochs), OneCycleLR (30% warmup from "
          "max_lr/div_factor, cosine anneal), linear warmup + cosine decay, ReduceLROnPlateau and polynomial decay "
          "with warmup follow the chapter's formulas.",
          f"Every schedule optbench offers for a chapter example, traced by `optbench schedules` at the chapter's "
          f"hyperparameters, matches the chapter's formula (or, where the chapter gives only code, its code run) "
          f"at every step to a relative difference <= {SHAPE_TOLERANCE:g} (ReduceLROnPlateau: both shown the same "
          f"100 validation losses).",
          schedule_shapes),
    Claim(11, "onecycle", "5.4",
          "OneCycleLR (super-convergence), 'state-of-the-art for many tasks', trains faster: fewer steps to a "
          "target than a constant or step schedule at the same budget.",
          f"MLP on the digits, SGD momentum 0.9 at LR 0.1 for every schedule, 120 steps, 3 seeds (0-2): OneCycle "
          f"reaches validation accuracy >= {TARGET_ACC} in every seed, and its median steps to it are fewer than "
          f"both the constant's and the step schedule's (never reaching it counts as slower). At scale=full the "
          f"same rule on the chapter's Exercise 2 runs (ResNet-18 on CIFAR-10, 30 epochs) with the target "
          f"{CIFAR10_TARGET}.",
          onecycle_speed),
    Claim(12, "lr_finder", "6.1, Exercise 2 bonus",
          "The LR range test finds the learning rate to train with (steepest descent of the loss); the bonus: it "
          "picks OneCycleLR's max LR.",
          f"MLP on the digits, 120 steps, 3 seeds (0-2): trained at the suggestion of `optbench lr-find` (run with the "
          f"chapter's range_test settings: 1e-7 to 1 in 100 steps, smooth_f 0.05), the mean best "
          f"validation accuracy is within {LR_MARGIN:g} of the best mean on the grid x0.1, x0.32, x1, x3.2, x10 "
          f"around it; both for plain SGD at a constant LR and for OneCycle's peak (SGD momentum 0.9).",
          lr_finder),
    Claim(20, "exercise2", "Exercise 2",
          "Scheduler ablation (none, StepLR, cosine, OneCycle, warmup + cosine; SGD momentum 0.9, the same "
          "initial LR): which achieves the best accuracy, which converges fastest?",
          f"The chapter's expectation: the best median final validation accuracy over 3 seeds (0-2) is cosine's "
          f"(its CNN recommendation, 7.1) or OneCycle's ('state-of-the-art', 5.4), and OneCycle has the fewest "
          f"median steps to accuracy >= {TARGET_ACC} (super-convergence); ties share a place. Proxy: recipe "
          f"digits_scheduler_ablation; scale=full: recipe scheduler_ablation on CIFAR-10, target {CIFAR10_TARGET}.",
          scheduler_ablation),
]
