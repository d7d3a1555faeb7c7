"""Claims of the chapter's training practice: Sophia on a language model (4.5), gradient clipping
under exploding gradients (6.2), and the GAN recipe's stability (7.3)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optbench.commands.reproduce.claim import Claim, Context, Outcome, listed, verdict
from optbench.commands.reproduce.first_order import edge
from optbench.commands.reproduce.vision import median_steps

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.finished_runs import RankingMetric, Run

SEEDS = [0, 1, 2]
QUIET = ["trainer.progress=false", "trainer.tensorboard=false"]

# --------------------------------------------------------------------------- claim 8: Sophia vs AdamW

# The char LSTM, not the BERT-like model: it is a causal language model as in Liu et al.'s GPT-2
# runs, and SophiaG's Hessian estimate samples a label at every output position, which is this
# model's loss exactly (masked-LM pre-training scores only the 15% masked positions).
LM_OPTIMIZERS = ("adamw", "sophia")
LM_GRID = (1e-3, 3e-3, 1e-2)  # the same grid for both: each takes its best, at the same budget
SPEEDUP = 1.8  # "about 2x": AdamW's steps to the target over Sophia's
LM_PROXY = ["model.hidden=128", "data.seq_len=64", "data.batch_size=32", "data.max_chars=200000",
            "trainer.max_steps=300", "trainer.eval_every=20"]
LM_FULL = ["trainer.eval_every=100"]  # the recipe's own model, text and 3,000 steps
# The recipe's AdamW betas, eps and decay would carry over to optimizer=sophia: Sophia's own are restated.
_ON_GPU = "optimizer.lr=1e-4,3e-4,1e-3 trainer.seed=0,1,2 trainer.eval_every=250 trainer.device=cuda"
SOPHIA_FULL_SCALE = (f"optbench run -m recipe=bert_pretrain {_ON_GPU} && optbench run -m recipe=bert_pretrain "
                     f"optimizer=sophia 'optimizer.betas=[0.965,0.99]' optimizer.eps=1e-15 optimizer.weight_decay=0.1 "
                     f"{_ON_GPU}  # nearest here to Liu et al.'s GPT-2 on OpenWebText, which optbench has no "
                     f"workload for")


def speedup(adamw: list[int | None], sophia: list[int | None]) -> float:
    """AdamW's median steps to the target over Sophia's (0 when Sophia's median never got there)."""
    a, s = median_steps(adamw), median_steps(sophia)
    return 0.0 if math.isinf(s) else a / s


def steps_to(run: Run, metric: RankingMetric, value: float) -> int | None:
    """The step of the run's first evaluation at `value` or better; None if none was."""
    from optbench.commands.report import time_to_target

    steps, _ = time_to_target(run, metric, value)
    return None if steps == "" else int(steps)


def final(run: Run, name: str) -> float:
    """A final metric of the run; NaN for a run that did not complete."""
    return run.summary.get("final", {}).get(name, math.nan) if run.status == "completed" else math.nan


def best_lrs(grid: list[Run], metric: RankingMetric) -> dict[str, float | None]:
    """optimizer -> the grid's LR with the best validation loss (None: every LR failed)."""
    from optbench.commands.report import lr_sensitivity
    from optbench.finished_runs import LR_KEY

    curves = {curve.group: curve for curve in lr_sensitivity(grid, ["optimizer", LR_KEY], metric)}
    if not curves:  # one LR per optimizer (smoke): that LR
        return {name: next(float(r.value(LR_KEY)) for r in grid if r.value("optimizer") == name)
                for name in LM_OPTIMIZERS}
    return {name: curves[f"optimizer={name}"].best_lr(metric.maximize) for name in LM_OPTIMIZERS}


def sophia_vs_adamw(ctx: Context) -> Outcome:
    from optbench.finished_runs import LR_KEY, RankingMetric

    seeds = ctx.pick(smoke=[0], proxy=SEEDS)
    common = ["recipe=rnn_lstm", *QUIET, *ctx.pick(smoke=["smoke=true"], proxy=LM_PROXY, full=LM_FULL)]
    lrs = ctx.pick(smoke=LM_GRID[1:2], proxy=LM_GRID)
    grid = ctx.sweep("lr_grid", [[f"optimizer={name}", f"optimizer.lr={lr}", "trainer.seed=0"]
                                 for name in LM_OPTIMIZERS for lr in lrs], common)
    metric = RankingMetric.of(grid)
    best = best_lrs(grid, metric)
    if None in best.values():
        return Outcome(verdict(False, proxy=True), f"every LR of the grid {list(lrs)} diverged for "
                       f"{', '.join(n for n, lr in best.items() if lr is None)}: no steps to compare.",
                       lm_workload(ctx, seeds), {"best_lr": best})
    more = ctx.sweep("seeds", [[f"optimizer={name}", f"optimizer.lr={best[name]}", f"trainer.seed={seed}"]
                               for name in LM_OPTIMIZERS for seed in seeds[1:]], common) if seeds[1:] else []
    runs = {name: [r for r in grid + more if r.value("optimizer") == name
                   and math.isclose(float(r.value(LR_KEY)), best[name], rel_tol=1e-9)] for name in LM_OPTIMIZERS}
    # The target comes from AdamW's runs alone: its median final validation loss at the budget.
    target = statistics.median(final(r, metric.name) for r in runs["adamw"])
    steps = {name: [steps_to(r, metric, target) for r in group] for name, group in runs.items()}
    ratio = speedup(steps["adamw"], steps["sophia"])
    ctx.save_figure(draw_lm(runs, target), "val_loss")
    shown = {name: ", ".join("never" if s is None else str(s) for s in group) for name, group in steps.items()}
    return Outcome(
        verdict=verdict(ratio >= SPEEDUP, proxy=True),
        seen=(f"steps to AdamW's median final validation loss {target:.4f} (seeds {', '.join(map(str, seeds))}): "
              f"AdamW (lr {best['adamw']:g}{edge(best['adamw'], list(lrs))}) {shown['adamw']}, Sophia (lr "
              f"{best['sophia']:g}{edge(best['sophia'], list(lrs))}) {shown['sophia']}: "
              f"{'no speed-up: most Sophia seeds never reached it' if ratio == 0 else f'{ratio:.2f}x'} (the rule "
              f"asks {SPEEDUP:g}x); Sophia's final loss "
              f"{listed([final(r, metric.name) for r in runs['sophia']], 4)}."),
        workload=lm_workload(ctx, seeds),
        figures={"best_lr": best, "grid_best_val_loss": {f"{r.value('optimizer')} lr={r.value(LR_KEY)}":
                                                         metric.best(r) for r in grid},
                 "target_val_loss": target, "steps_to_target": steps, "speedup": ratio,
                 "final_val_loss": {name: [final(r, metric.name) for r in group] for name, group in runs.items()}},
        full_scale=SOPHIA_FULL_SCALE,
    )


def lm_workload(ctx: Context, seeds: list[int]) -> str:
    size = ctx.pick(smoke="the recipe's smoke size", proxy="hidden 128, sequences of 64, batch 32, the first "
                    "200,000 characters, 300 steps, evaluated every 20", full="the recipe's hidden 256, sequences "
                    "of 128, batch 64, all the text, 3,000 steps, evaluated every 100")
    return (f"a stand-in for LLM pre-training: recipe rnn_lstm (character-level LSTM language model on the Python "
            f"stdlib's source, clipping 1.0, constant LR), {size}; AdamW and SophiaG (their own defaults otherwise) "
            f"each at its best LR of {list(ctx.pick(smoke=LM_GRID[1:2], proxy=LM_GRID))} on seed 0, then seeds "
            f"{', '.join(map(str, seeds))} at it")


def draw_lm(runs: dict[str, list[Run]], target: float) -> Figure:
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4))
    for color, (name, group) in zip(("tab:blue", "tab:orange"), runs.items()):
        for i, run in enumerate(group):
            curve = sorted(run.series("val", "loss").items())
            ax.plot(*zip(*curve), color=color, alpha=0.8, label=name if i == 0 else None)
    ax.axhline(target, color="gray", linestyle="--", label="target: AdamW's median final")
    ax.set(xlabel="optimizer step", ylabel="validation loss", title="char LSTM: AdamW vs SophiaG at their best LR")
    ax.legend()
    return figure


# --------------------------------------------------------------------------- claim 13: clipping

CLIP = 1.0  # the chapter's max_norm
EXPLOSION = 10.0  # an exploding gradient: a norm at least ten times the clip
ROUNDING = 1e-3  # relative slack for float32 norms measured after the fact


@dataclass(frozen=True)
class Norms:
    """One run's gradient norms (before and after clipping, every step) and update norms."""

    completed: bool
    pre: list[float]
    post: list[float]
    updates: list[float]

    @classmethod
    def of(cls, run: Run) -> Norms:
        return cls(run.status == "completed", list(run.series("train", "grad_norm").values()),
                   list(run.series("train", "grad_norm_post_clip").values()), list(update_norms(run).values()))


def update_norms(run: Run) -> dict[int, float]:
    """step -> the 2-norm of the whole update, from diagnostics.jsonl (per parameter: the ratio of
    its update's norm to its weight's norm, and that weight's norm)."""
    return {line["step"]: math.sqrt(sum((ratio * line["weight_norm"][name]) ** 2
                                        for name, ratio in line["update_ratio"].items()))
            for line in run.diagnostics if line.get("update_ratio")}


def bounded(clipped: Norms, lr: float) -> bool:
    """The clipped run: it completed, clipping acted (a gradient above the clip), and after it every
    gradient norm is within the clip and every update within lr x clip."""
    limit = 1 + ROUNDING  # all() and any(), not max(): a NaN fails each comparison wherever it stands
    return (clipped.completed and bool(clipped.post) and bool(clipped.updates) and any(g > CLIP for g in clipped.pre)
            and all(g <= CLIP * limit for g in clipped.post) and all(u <= lr * CLIP * limit for u in clipped.updates))


def exploded(unclipped: Norms) -> bool:
    """The unclipped run: a gradient norm of EXPLOSION x the clip or more, or a non-finite loss."""
    return not unclipped.completed or any(g >= EXPLOSION * CLIP for g in unclipped.pre)


def clipping_holds(clipped: list[Norms], unclipped: list[Norms], lr: float) -> bool:
    """Claim 13's rule, in every seed."""
    return all(bounded(c, lr) and exploded(u) for c, u in zip(clipped, unclipped, strict=True))


def clipping_bounds_updates(ctx: Context) -> Outcome:
    seeds = ctx.pick(smoke=[0], proxy=SEEDS)
    runs = ctx.sweep("runs", [[f"trainer.seed={seed}", clip] for seed in seeds
                              for clip in ("trainer.clip_norm=null", f"trainer.clip_norm={CLIP}")],
                     ["recipe=rnn_exploding", *QUIET, *ctx.pick(smoke=["smoke=true"], proxy=[])])
    unclipped = [Norms.of(r) for r in runs[0::2]]
    clipped = [Norms.of(r) for r in runs[1::2]]
    lr = float(runs[0].value("optimizer.lr"))
    ctx.save_figure(draw_norms(runs[0], runs[1]), "gradient_norms")

    def most(norms: list[Norms], field: str) -> list[float]:
        return [max(getattr(n, field), default=math.nan) for n in norms]

    figures = {"lr": lr, "clip": CLIP,
               "unclipped": {"max_grad_norm": most(unclipped, "pre"), "max_update_norm": most(unclipped, "updates"),
                             "median_grad_norm": [statistics.median(n.pre) if n.pre else math.nan for n in unclipped],
                             "completed": [n.completed for n in unclipped],
                             "final_val_loss": [final(r, "val/loss") for r in runs[0::2]]},
               "clipped": {"max_grad_norm": most(clipped, "pre"), "max_post_clip": most(clipped, "post"),
                           "max_update_norm": most(clipped, "updates"),
                           "clipped_steps": [sum(g > CLIP for g in n.pre) for n in clipped],
                           "completed": [n.completed for n in clipped],
                           "final_val_loss": [final(r, "val/loss") for r in runs[1::2]]}}
    u, c = figures["unclipped"], figures["clipped"]
    return Outcome(
        verdict=verdict(clipping_holds(clipped, unclipped, lr), proxy=False),
        seen=(f"seeds {', '.join(map(str, seeds))}, SGD lr {lr:g}: unclipped, the largest gradient norm was "
              f"{listed(u['max_grad_norm'], 3)} (median {listed(u['median_grad_norm'], 2)}) and the largest update "
              f"{listed(u['max_update_norm'], 3)}; clipped at {CLIP:g}, pre-clip norms up to "
              f"{listed(c['max_grad_norm'], 3)} ({listed(c['clipped_steps'])} steps clipped) became at most "
              f"{listed(c['max_post_clip'], 4)}, updates at most {listed(c['max_update_norm'], 4)} (lr x clip = "
              f"{lr * CLIP:g}); final validation loss unclipped {listed(u['final_val_loss'], 3)}, clipped "
              f"{listed(c['final_val_loss'], 3)}."),
        workload=(f"recipe rnn_exploding: character-level LSTM (hidden 128) on the stdlib's source, plain SGD at lr "
                  f"{lr:g}, {runs[0].summary.get('steps')} steps, gradient norm logged every step and update size "
                  f"measured every step; trainer.clip_norm=null vs {CLIP:g}, {len(seeds)} seed(s)"),
        figures=figures,
    )


def draw_norms(unclipped: Run, clipped: Run) -> Figure:
    """The chapter's figure (6.2): the gradient norm before and after clipping, per step; and the
    unclipped run's, which nothing bounds."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8, 4))
    for run, name, style in ((unclipped, "unclipped", {"color": "tab:red", "alpha": 0.6}),
                             (clipped, "clipped: before clipping", {"color": "tab:blue", "alpha": 0.7}),
                             (clipped, "clipped: after clipping", {"color": "tab:green"})):
        key = "grad_norm_post_clip" if "after" in name else "grad_norm"
        ax.plot(*zip(*sorted(run.series("train", key).items())), label=name, **style)
    ax.axhline(CLIP, color="gray", linestyle="--", label=f"clip_norm {CLIP:g}")
    ax.set(yscale="log", xlabel="optimizer step", ylabel="gradient norm",
           title=f"Gradient clipping effect (seed {clipped.value('trainer.seed')})")
    ax.legend()
    return figure


# --------------------------------------------------------------------------- claim 18: the GAN recipe

BETA1 = {"0.5": "[0.5,0.999]", "0.9": "[0.9,0.999]"}  # the recipe's, and Adam's default
LOSS_BOUND = 5.0  # a logged loss above this: one network wins outright (D(G(z)) below e^-5, under 1%)
# The chapter's own recipe 4 on the bundled digits as images (about 4 min a run on one CPU core), then beta1 0.9.
GAN_FULL_SCALE = ("optbench run -m recipe=dcgan trainer.seed=0,1,2 && optbench run -m recipe=dcgan trainer.seed=0,1,2 "
                  "'gan.g.betas=[0.9,0.999]' 'gan.d.betas=[0.9,0.999]'")


def stable(completed: bool, losses: list[float], target_met: bool) -> bool:
    """A stable GAN run: it completed, every logged loss (G's and D's) is finite and at most
    LOSS_BOUND, and its final samples meet the workload's target."""
    return completed and target_met and all(math.isfinite(v) and v <= LOSS_BOUND for v in losses)


def gan_holds(recipe: list[bool], default: list[bool]) -> bool:
    """Claim 18's rule: every seed of the recipe stable, and no fewer stable seeds than beta1 0.9."""
    return all(recipe) and sum(recipe) >= sum(default)


def run_stability(run: Run) -> dict[str, Any]:
    """What claim 18 reads from one GAN run: whether it was stable, and the numbers that decided it."""
    from optbench.sample_quality import SampleQuality
    from optbench.tasks import Target

    losses = [*run.series("train", "loss").values(), *run.series("train", "d_loss").values()]
    goal = Target.parse(run.config("data.target"), SampleQuality.metrics)
    met = goal is not None and goal.met({k.removeprefix("val/"): v for k, v in run.summary.get("final", {}).items()})
    return {"stable": stable(run.status == "completed", losses, met), "status": run.status,
            "max_loss": max(losses, default=math.nan), "final_modes": final(run, "val/modes"),
            "final_hq": final(run, "val/hq"), "target": str(goal)}


def gan_trains_stably(ctx: Context) -> Outcome:
    """At proxy scale the 2-D ring GAN stands in; at scale=full the chapter's recipe 4 itself runs
    (DCGAN on the bundled digits: no data to fetch, about 4 min a run on a CPU)."""
    seeds = ctx.pick(smoke=[0], proxy=SEEDS)
    jobs = [[f"gan.g.betas={betas}", f"gan.d.betas={betas}", f"trainer.seed={seed}"]
            for betas in BETA1.values() for seed in seeds]
    if ctx.scale == "full":
        runs = ctx.sweep("dcgan_runs", jobs, ["recipe=dcgan", *QUIET])
        workload = (f"the chapter's recipe 4: recipe dcgan (DCGAN on the bundled digits as 32x32 images; Adam lr 2e-4, "
                    f"betas (0.5, 0.999), {runs[0].summary.get('steps')} steps, one D step then one G step), "
                    f"{len(seeds)} seeds, and the same with beta1 0.9")
    else:
        runs = ctx.sweep("runs", jobs, ["recipe=gan_ring", *QUIET, *ctx.pick(smoke=["smoke=true"], proxy=[])])
        workload = (f"a stand-in for DCGAN on images: recipe gan_ring (2-D GAN, MLP generator and discriminator, ring "
                    f"of 8 Gaussians; Adam lr 1e-3, betas (0.5, 0.999), {runs[0].summary.get('steps')} steps, one D "
                    f"step then one G step), {len(seeds)} seed(s), and the same with beta1 0.9")
    found = {beta1: [run_stability(r) for r in runs[i * len(seeds):(i + 1) * len(seeds)]]
             for i, beta1 in enumerate(BETA1)}
    table = {beta1: {key: [r[key] for r in rows] for key in rows[0]} for beta1, rows in found.items()}
    recipe, default = table["0.5"], table["0.9"]
    return Outcome(
        verdict=verdict(gan_holds(recipe["stable"], default["stable"]), proxy=ctx.scale != "full"),
        seen=(f"seeds {', '.join(map(str, seeds))}: beta1 0.5 (the recipe) stable in {sum(recipe['stable'])} of "
              f"{len(seeds)} (final modes {listed(recipe['final_modes'])}, target {recipe['target'][0]}; high-quality "
              f"samples {listed(recipe['final_hq'], 2)}, largest loss {listed(recipe['max_loss'], 2)}); beta1 0.9 "
              f"stable in {sum(default['stable'])} (modes {listed(default['final_modes'])}, high-quality "
              f"{listed(default['final_hq'], 2)}, largest loss {listed(default['max_loss'], 2)})."),
        workload=workload,
        figures=table,
        full_scale=GAN_FULL_SCALE,
    )


CLAIMS = [
    Claim(8, "sophia", "4.5",
          "Sophia: \"Training language models 2x faster than Adam.\"",
          f"On a character-level LSTM language model, AdamW and SophiaG each at its best LR of {list(LM_GRID)} "
          f"(seed 0, the same steps), then seeds 0, 1, 2 at it: the target is AdamW's median final validation loss; "
          f"AdamW's median steps to it over Sophia's (a seed that never gets there counts as infinitely slow) "
          f"is at least {SPEEDUP:g}.",
          sophia_vs_adamw),
    Claim(13, "clipping", "6.2",
          "Gradient clipping by norm (max_norm 1.0) prevents gradient explosion.",
          f"A character LSTM under plain SGD at lr 20 (recipe rnn_exploding), seeds 0, 1, 2, with and without "
          f"trainer.clip_norm={CLIP:g}: in every seed, without clipping some gradient norm is at least "
          f"{EXPLOSION:g}x the clip (or the loss goes non-finite); with it, the run completes, clipping acts (some "
          f"pre-clip norm above {CLIP:g}), every post-clip norm is at most {CLIP:g} and every update's norm at most "
          f"lr x {CLIP:g} ({ROUNDING:g} relative slack for float32).",
          clipping_bounds_updates),
    Claim(18, "gan", "7.3",
          "The GAN recipe (Adam, lr 2e-4, betas (0.5, 0.999): \"less momentum than default\") trains stably.",
          f"The gan_ring recipe (its betas (0.5, 0.999)), seeds 0, 1, 2: every run is stable: it completes, every "
          f"logged G and D loss is finite and at most {LOSS_BOUND:g}, and its final samples meet the workload's "
          f"target (val/modes >= 7 of 8); and the same seeds with beta1 0.9 have no more stable runs. At scale=full "
          f"the same rule on the chapter's recipe itself (recipe dcgan on the bundled digit images, target "
          f"val/modes >= 10).",
          gan_trains_stably),
]
