"""Claims of the chapter's large-batch practice: LARS and LAMB, gradient accumulation, mixed precision."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optbench.commands.reproduce.claim import OUT_OF_REACH, Claim, Context, Outcome, has_gpu, out_of_reach, verdict

if TYPE_CHECKING:
    from optbench.finished_runs import Run

# Claim 4: (base optimizer, its layer-wise counterpart, LR scaling rule, the weight decay both get).
PAIRS = (("momentum", "lars", "linear", 5e-4), ("adamw", "lamb", "sqrt", 0.01))
SMALL, LARGE = 256, 8192  # the LRs' reference batch, and 32 times it
SEEDS = [0, 1, 2]

# Claim 14: the large_batch recipe (momentum SGD, its LR and warmup + cosine schedule) with its ResNet at
# depth 20 (BatchNorm; CIFAR-style, small enough for a CPU) and an MLP (no batch statistics). The float64
# parity runs on CIFAR-shaped synthetic data (any number of whole batches of 1024); the timed runs, whose
# accuracy should mean something, on the bundled digits.
ARMS = ("accumulate_64x16", "direct_1024")
RESNET20 = "model.depth=20"
PARITY_DATA = ["recipe=large_batch", "data=synthetic", "data.input_shape=[3,8,8]", "data.val_size=16"]
PARITY_MODELS = {"mlp": ["model=mlp"], "resnet20_batchnorm": [RESNET20]}
RECIPE_ON_DIGITS = ["recipe=large_batch", "data=digits", RESNET20]
PARITY_TOLERANCE = 1e-10  # float64 rounding of a different order of additions is ~1e-15 of the weights' move

AMP_FULL_SCALE = ("python benchmarks/gpu_check.py --out gpu_check  # figures.samples_per_s: each workload at "
                  "precision 32, 16 and bf16; then optbench run -m recipe=large_batch data.root=~/data "
                  "batching=direct_1024 optimizer=momentum trainer.precision=32,16,bf16 "
                  "&& optbench report outputs/multirun/<date>/<time>")


# --------------------------------------------------------------------------- claim 4: LARS and LAMB

FULL_SCALE_4 = " && ".join(
    f"optbench run -m recipe=large_batch data.root=DIR batching=direct_1024 data.batch_size={SMALL},{LARGE} "
    f"optimizer={base},{layerwise} optimizer.lr_scaling={rule} optimizer.weight_decay={decay} "
    f"trainer.seed=0,1,2" for base, layerwise, rule, decay in PAIRS) + (
    "  # ResNet-18 on CIFAR-10, 30 epochs, on a GPU; or optbench reproduce 4 scale=full data.root=DIR")
FULL_WORKLOAD = (f"recipe large_batch: ResNet-18 on CIFAR-10, batch {SMALL} vs {LARGE} (batching=direct_1024 with "
                 f"data.batch_size), 30 epochs, 5 of warmup then cosine, the LRs scaled from batch {SMALL} as at "
                 f"proxy scale, {len(SEEDS)} seeds")

def final_accuracy(run: Run) -> float:
    """Final validation accuracy; NaN for a run that did not complete (diverged)."""
    return run.summary.get("final", {}).get("val/acc", math.nan) if run.status == "completed" else math.nan


def loses_less(layerwise: float, base: float) -> bool:
    """Whether a drop in accuracy `layerwise` is smaller than `base` (NaN: the large batch diverged,
    the largest drop there is)."""
    return not math.isnan(layerwise) and (math.isnan(base) or layerwise < base)


def accuracies(runs: list[Run]) -> dict[str, dict[int, list[float]]]:
    """optimizer -> batch -> final accuracy per seed, in the order of the seeds."""
    table: dict[str, dict[int, list[float]]] = {}
    for run in sorted(runs, key=lambda r: r.value("trainer.seed")):
        table.setdefault(run.value("optimizer"), {}).setdefault(run.value("data.batch_size"), []).append(
            final_accuracy(run))
    return table


def accuracy_drops(table: dict[str, dict[int, list[float]]]) -> dict[str, list[float]]:
    """optimizer -> per seed, final accuracy at the small batch minus at the large one."""
    return {name: [s - l for s, l in zip(by_batch[SMALL], by_batch[LARGE], strict=True)]
            for name, by_batch in table.items()}


def pair_holds(drops: dict[str, list[float]], base: str, layerwise: str) -> bool:
    """The rule for one pair: the layer-wise optimizer loses less on every seed."""
    return all(loses_less(lw, b) for lw, b in zip(drops[layerwise], drops[base], strict=True))


def large_batch_figure(table: dict[str, dict[int, list[float]]]) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, by_batch in table.items():
        ax.plot([SMALL, LARGE], [statistics.fmean(by_batch[b]) for b in (SMALL, LARGE)], marker="o", label=name)
    ax.set(xscale="log", xticks=[SMALL, LARGE], xticklabels=[str(SMALL), str(LARGE)], xlabel="batch (same epochs)",
           ylabel="final val/acc (mean over seeds)", title="Accuracy kept at a large batch")
    ax.minorticks_off()
    ax.legend()
    return fig


def pair_line(table: dict[str, dict[int, list[float]]], drops: dict[str, list[float]], base: str, layerwise: str,
              p_value: str) -> str:
    """One pair's accuracies and drops, and how the rule came out, for `seen`."""
    def arm(name: str) -> str:
        points = "/".join("diverged" if math.isnan(d) else f"{100 * d:+.1f}" for d in drops[name])
        small, large = (statistics.fmean(table[name][b]) for b in (SMALL, LARGE))
        return f"{name} {small:.3f} -> {large:.3f} ({points})"

    if pair_holds(drops, base, layerwise):
        outcome = "smaller on every seed"
    elif pair_holds(drops, layerwise, base):
        outcome = "larger on every seed"
    else:
        outcome = "not smaller on every seed"
    return f"{arm(base)} vs {arm(layerwise)}: {outcome} (paired t-test p={p_value or 'n/a'})"


def layerwise_keeps_large_batches(ctx: Context) -> Outcome:
    from optbench.commands.report import paired_verdict

    seeds = ctx.pick(smoke=[0], proxy=SEEDS)
    pairs = ctx.pick(smoke=PAIRS[:1], proxy=PAIRS)
    jobs = [[f"optimizer={name}", f"optimizer.lr_scaling={rule}", f"optimizer.weight_decay={decay}",
             f"data.batch_size={batch}", f"trainer.seed={seed}"]
            for base, layerwise, rule, decay in pairs for name in (base, layerwise)
            for batch in (SMALL, LARGE) for seed in seeds]
    if ctx.scale == "full":
        if missing := ctx.missing("large_batch"):
            return out_of_reach(missing, FULL_WORKLOAD, FULL_SCALE_4)
        runs = ctx.sweep("cifar10_runs", jobs, [*ctx.on_data("large_batch"), "batching=direct_1024"])
    else:
        runs = ctx.sweep("runs", jobs, ["recipe=large_batch_proxy", *ctx.pick(smoke=["smoke=true"], proxy=[])])
    table = accuracies(runs)
    drops = accuracy_drops(table)
    held = {layerwise: pair_holds(drops, base, layerwise) for base, layerwise, _, _ in pairs}
    tests = {}
    for base, layerwise, _, _ in pairs:
        diffs = [b - lw for b, lw in zip(drops[base], drops[layerwise])]  # > 0: the layer-wise one lost less
        tests[layerwise] = paired_verdict(diffs, layerwise if statistics.fmean(diffs) > 0 else base)
    ctx.save_figure(large_batch_figure(table), "accuracy_vs_batch")
    epochs = runs[0].summary.get("epochs", math.nan)
    workload = FULL_WORKLOAD if ctx.scale == "full" else (
        f"recipe large_batch_proxy, the stand-in for ResNet-18/BERT: an MLP 64-128-128-10 on 65,536 synthetic "
        f"Gaussian samples labelled by a linear teacher, batch {SMALL} vs {LARGE}, {epochs:g} epochs, warmup 10% "
        f"then cosine; the optimizer configs' LRs (momentum 0.1, LARS 1.0 x trust 0.001, AdamW and LAMB 1e-3) at "
        f"batch 256, scaled linearly (momentum, LARS; weight decay 5e-4 on every tensor) or by sqrt (AdamW, LAMB; "
        f"decay 0.01); {len(seeds)} seed(s)")
    return Outcome(
        verdict=verdict(all(held.values()), proxy=ctx.scale != "full"),
        seen=(f"Final val/acc from batch {SMALL} to {LARGE} at the same {epochs:g} epochs (mean over seeds), and "
              f"the drop per seed in points: "
              + "; ".join(pair_line(table, drops, base, layerwise, tests[layerwise][0])
                          for base, layerwise, _, _ in pairs) + "."),
        workload=workload,
        figures={"final_accuracy": table, "accuracy_drop": drops, "layerwise_loses_less": held,
                 "paired_t_test": {k: {"p": p, "verdict": v} for k, (p, v) in tests.items()}},
        full_scale=FULL_SCALE_4,
    )


# --------------------------------------------------------------------------- claim 14: accumulation

def float64_weights(overrides: list[str], run_dir: Path) -> tuple[list[Any], list[Any]]:
    """(start, end) weights of a run of `overrides`, trained by the trainer with the model and the data
    in float64, so that only the order of additions tells two runs apart."""
    from optbench.config import job_config
    from optbench.trainer import Trainer

    trainer = Trainer(job_config([*overrides, "optimizer.fused=false", "trainer.device=cpu",
                                  "trainer.progress=false", "trainer.tensorboard=false"]), run_dir)
    trainer.model.double()
    trainer.data.x_train, trainer.data.x_val = trainer.data.x_train.double(), trainer.data.x_val.double()
    start = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    return start, [p.detach().clone() for p in trainer.model.parameters()]


def relative_gap(start: list[Any], a: list[Any], b: list[Any]) -> float:
    """‖a − b‖ / ‖b − start‖ over all weights: how far apart two runs end, against how far they moved."""
    off = sum(float((x - y).square().sum()) for x, y in zip(a, b, strict=True))
    moved = sum(float((y - s).square().sum()) for s, y in zip(start, b, strict=True))
    return math.sqrt(off / moved)


def accumulation_gaps(folder: Path, steps: int) -> dict[str, float]:
    """model -> the relative gap between batching=accumulate_64x16 and batching=direct_1024 after
    `steps` optimizer steps in float64."""
    gaps = {}
    for model, overrides in PARITY_MODELS.items():
        ends = {}
        for arm in ARMS:
            start, ends[arm] = float64_weights(
                [*PARITY_DATA, *overrides, f"batching={arm}", f"data.train_size={1024 * steps}",
                 f"trainer.max_steps={steps}", "scheduler.warmup=0"], folder / f"{model}_{arm}")
        # Both arms start from the same weights: the seed's, whatever the batching.
        gaps[model] = relative_gap(start, ends["accumulate_64x16"], ends["direct_1024"])
    return gaps


def mib(run: Run) -> float:
    return run.summary.get("peak_memory", {}).get("bytes", math.nan) / 2**20


def arm_line(run: Run) -> str:
    return (f"{run.summary.get('wall_time_s', math.nan):.1f} s, {mib(run):.1f} MiB peak, "
            f"val/acc {final_accuracy(run):.3f}")


def accumulation_is_large_batch(ctx: Context) -> Outcome:
    steps = ctx.pick(smoke=1, proxy=4)
    gaps = ctx.cached("float64_gaps", lambda: accumulation_gaps(ctx.folder / "float64", steps))
    # Time, memory and accuracy of both arms (Exercise 3): the recipe as it is (30 epochs, 5 of warmup).
    length = ctx.pick(smoke=["trainer.max_steps=1", "scheduler.warmup=0"], proxy=[])
    runs = dict(zip(ARMS, ctx.sweep("runs", [[f"batching={arm}"] for arm in ARMS], [*RECIPE_ON_DIGITS, *length])))
    accumulated, direct = runs["accumulate_64x16"], runs["direct_1024"]
    return Outcome(
        verdict=verdict(gaps["mlp"] <= PARITY_TOLERANCE, proxy=False),
        seen=(f"After {steps} step{'s' * (steps > 1)} in float64 the weights of 64x16 and 1024 differ by "
              f"{gaps['mlp']:.1e} of their move for the MLP (tolerance {PARITY_TOLERANCE:g}), but by "
              f"{gaps['resnet20_batchnorm']:.1e} for the ResNet with BatchNorm (each micro-batch is normalised by its "
              f"own 64 samples). On the digits, float32, "
              f"{accumulated.summary.get('steps')} steps: 64x16 {arm_line(accumulated)}; 1024 direct "
              f"{arm_line(direct)}."),
        workload=(f"float64, {steps} optimizer steps of the large_batch recipe's momentum SGD (lr 0.1, cosine) on "
                  f"CIFAR-shaped synthetic data (3x8x8), for an MLP 192-256-256-10 and the recipe's ResNet at depth "
                  f"20 (BatchNorm); time, peak memory (live tensor bytes, CPU) and accuracy from float32 runs of the "
                  f"recipe with that ResNet on the digits (1,437 8x8 images: each epoch a step of 1,024 and one of "
                  f"413), {accumulated.summary.get('epochs', math.nan):g} epochs, one seed"),
        figures={"relative_weight_gap_float64": gaps, "tolerance": PARITY_TOLERANCE,
                 **{f"{arm}_{key}": value for arm, run in runs.items()
                    for key, value in (("wall_time_s", run.summary.get("wall_time_s")),
                                       ("samples_per_s", run.summary.get("samples_per_s")),
                                       ("peak_memory_mib", mib(run)), ("val_acc", final_accuracy(run)))}},
        full_scale="optbench run -m recipe=large_batch data.root=~/data  # ResNet-18 on CIFAR-10, on a GPU",
    )


# --------------------------------------------------------------------------- claim 15: mixed precision

PRECISIONS = ("32", "16", "bf16")
# The large_batch recipe's ResNet-18 at batch 256 on CIFAR-shaped data held on the GPU: the speed of the
# step, not of a data loader, is what autocast changes.
ON_GPU = ["recipe=large_batch", "data=synthetic", "data.input_shape=[3,32,32]", "data.val_size=256",
          "batching=direct_1024", "data.batch_size=256", "scheduler.warmup=0", "trainer.device=cuda",
          "trainer.progress=false", "trainer.tensorboard=false"]


def mixed_precision_on_gpu(ctx: Context) -> Outcome:
    """The claim itself: samples/s of one workload at each precision on this machine's GPU."""
    steps = ctx.pick(smoke=4, proxy=200, full=1000)
    runs = ctx.sweep("cuda", [[f"trainer.precision={p}"] for p in PRECISIONS],
                     [*ON_GPU, f"data.train_size={256 * steps}", f"trainer.max_steps={steps}"])
    speed = {p: run.summary.get("samples_per_s", math.nan) for p, run in zip(PRECISIONS, runs)}
    fastest = max(("16", "bf16"), key=lambda p: speed[p])
    return Outcome(
        verdict=verdict(speed[fastest] > speed["32"], proxy=False),
        seen=(f"samples/s: float32 {speed['32']:.0f}, fp16 + GradScaler {speed['16']:.0f} "
              f"({speed['16'] / speed['32']:.2f}x), bf16 {speed['bf16']:.0f} ({speed['bf16'] / speed['32']:.2f}x)."),
        workload=(f"the large_batch recipe's ResNet-18 on CIFAR-shaped synthetic data (3x32x32, on the GPU), batch "
                  f"256, {steps} steps at each precision, momentum SGD, one seed, on {gpu_name()}"),
        figures={"samples_per_s": speed},
        full_scale=AMP_FULL_SCALE,
    )


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def mixed_precision_speeds_up(ctx: Context) -> Outcome:
    """On a GPU: the claim (`mixed_precision_on_gpu`). Without one it is out of reach, and what
    bf16 autocast does on this CPU is measured beside it, as information (it is not the claim: the
    chapter's fp16 with a GradScaler is a CUDA feature)."""
    if has_gpu() and ctx.scale != "smoke":
        return mixed_precision_on_gpu(ctx)
    runs = ctx.sweep("cpu_bf16", [[f"trainer.precision={p}"] for p in ("32", "bf16")], [
        *RECIPE_ON_DIGITS, "trainer.device=cpu", "trainer.accumulation_steps=1", "data.batch_size=256",
        "scheduler.warmup=0", f"trainer.max_steps={ctx.pick(smoke=2, proxy=16)}"])
    fp32, bf16 = (run.summary.get("samples_per_s", math.nan) for run in runs)
    where = "This machine has no GPU" if not has_gpu() else "At smoke scale this check measures the CPU only"
    return Outcome(
        verdict=OUT_OF_REACH,
        seen=(f"{where}, so the claim (fp16/bf16 autocast on CUDA) is not checked. Not the claim, "
              f"for information: bf16 autocast on this CPU trained the ResNet at {bf16:.0f} samples/s against "
              f"{fp32:.0f} in float32 ({bf16 / fp32:.2f}x)."),
        workload=(f"information only: the large_batch recipe with its ResNet at depth 20 on the digits, batch 256,"
                  f" {runs[0].summary.get('steps')} steps each at precision 32 and bf16 on the CPU"),
        figures={"cpu_samples_per_s": {"32": fp32, "bf16": bf16}},
        full_scale=AMP_FULL_SCALE,
    )


CLAIMS = [
    Claim(4, "large_batch", "4.1, Exercise 3",
          "LAMB and LARS make large batches work where plain SGD or Adam degrade (\"Training BERT with batch "
          "size 32K (vs 256 with Adam)\"; Exercise 3: \"show it helps with large batches\").",
          f"On the large_batch_proxy recipe, batch {SMALL} vs {LARGE} at the same 8 epochs, each config's LR scaled "
          f"from batch {SMALL} by sqrt for AdamW and LAMB (the chapter's LAMB rule) and linearly for momentum SGD "
          f"and LARS (Goyal et al. 2017), after a 10% warmup: per seed ({len(SEEDS)}), the drop in final validation "
          f"accuracy from batch {SMALL} to {LARGE} is smaller for LARS than for momentum SGD and smaller for LAMB "
          f"than for AdamW, on every seed (a diverged run drops the most). The paired t-test over seeds is reported "
          f"beside it.",
          layerwise_keeps_large_batches),
    Claim(14, "accumulation", "6.3, Exercise 3",
          "Gradient accumulation simulates a larger batch: 16 accumulated micro-batches of 64 (loss divided by "
          "16) equal one batch of 1024.",
          f"In float64, after 4 optimizer steps of the same momentum SGD and LR schedule from the same start and "
          f"data order, batching=accumulate_64x16 and batching=direct_1024 end with weights w_acc, w_1024 such "
          f"that |w_acc - w_1024| / |w_1024 - w_0| <= {PARITY_TOLERANCE:g}, for a model without batch "
          f"statistics (an MLP). With BatchNorm (the ResNet) the same gap is measured and reported, not judged. "
          f"Time, peak memory and accuracy of both arms are reported.",
          accumulation_is_large_batch),
    Claim(15, "amp", "6.4, Exercise 3 bonus",
          "Mixed precision (fp16 autocast with a GradScaler) speeds training up.",
          "On a CUDA GPU, samples/s with fp16 (GradScaler) or bf16 autocast above float32 on the same workload "
          "(the large_batch recipe's ResNet-18, batch 256, CIFAR-shaped data on the GPU; 200 steps each at proxy "
          "scale, 1,000 at full). Out of reach on a CPU-only machine.",
          mixed_precision_speeds_up),
]
