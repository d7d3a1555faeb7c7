"""`optbench lr-find`: the LR range test (Smith 2017, "Cyclical Learning Rates", arXiv:1506.01186;
the chapter's section 6.1) on the model, data and optimizer a run with the same overrides builds.

The LR grows exponentially from --start to --end, one optimizer step per value; the loss is
smoothed with an exponential moving average (bias-corrected, so the first points are not pulled
towards zero) and the test stops when the smoothed loss exceeds 4x its best. The model and the
optimizer are then put back as they were: the chapter's `state_dict()` snapshot holds references
to the live tensors and restores nothing, so the snapshot here is a deep copy.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optbench.commands.common import Invocation, reports_bad_input, timestamped_output, writable_folder
from optbench.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.data import Batch
    from optbench.trainer import Trainer

DIVERGENCE_FACTOR = 4.0  # stop once the smoothed loss is this many times its best
SKIP_START = 3  # the first points' slope says more about the smoothing than about the LR
# The last points before the stop: the smoothed loss lags the loss, so its steepest fall can come
# where the loss itself already climbs (the chapter's `plot` skips 5 for this; with the end kept,
# SGD on the digits MLP was told 1.56, where it diverges in every seed: `optbench reproduce lr_finder`).
SKIP_END = 5


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed
    applied: dict[str, Any] = field(default_factory=dict)  # what its updates applied (as summary.json's)

    def steepest(self) -> float:
        """LR where the smoothed loss falls fastest against log LR."""
        end = len(self.lrs) - 1 - (SKIP_END if len(self.lrs) > SKIP_START + SKIP_END + 2 else 0)
        slopes = [(self.losses[i + 1] - self.losses[i - 1]) / math.log(self.lrs[i + 1] / self.lrs[i - 1])
                  for i in range(max(1, SKIP_START), end)]
        if not slopes:
            return self.lrs[len(self.lrs) // 2]
        return self.lrs[max(1, SKIP_START) + min(range(len(slopes)), key=slopes.__getitem__)]

    def valley(self) -> float:
        """A tenth of the LR at the lowest smoothed loss: the usual safe choice of a peak LR."""
        return self.lrs[min(range(len(self.losses)), key=self.losses.__getitem__)] / 10


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="optbench lr-find",
        description="LR range test on the configured model, data and optimizer: a PNG with the "
        "suggested LR marked, a CSV, and the override to use it.",
    )
    parser.add_argument("--start", type=float, default=1e-7, help="first LR (default 1e-7)")
    parser.add_argument("--end", type=float, default=10.0, help="last LR (default 10)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    # The chapter's smooth_f=0.05: fastai's 0.98 lags the loss by ~50 points of a 100-point test.
    parser.add_argument("--smoothing", type=float, default=0.95, help="EMA factor of the loss (default 0.95)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/lr_find/DATE/TIME)")
    for flag, short in (("--config-dir", "-cd"), ("--config-name", "-cn"), ("--config-path", "-cp")):
        parser.add_argument(flag, short, help="as for optbench run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for optbench run")
    return parser.parse_intermixed_args(args)  # flags may come after the overrides


def check_arguments(options: argparse.Namespace) -> None:
    """Refuse a range that cannot be swept (an infinite or NaN end, an LR of 0, too few steps)."""
    for flag, value in (("--start", options.start), ("--end", options.end)):
        if not math.isfinite(value):
            raise ConfigError(f"{flag}={value}: must be a finite LR.")
    if not 0 < options.start < options.end:
        raise ConfigError(f"--start={options.start} --end={options.end}: need 0 < start < end.")
    if options.steps < 5:
        raise ConfigError(f"--steps={options.steps}: need steps >= 5 (the slope needs points on both sides).")
    if not 0 <= options.smoothing < 1:
        raise ConfigError(f"--smoothing={options.smoothing}: need 0 <= smoothing < 1.")


@reports_bad_input
def main(args: list[str]) -> int:
    from optbench.config import job_config
    from optbench.trainer import Trainer

    options = parse_args(args)
    # The same flags as `optbench run` (--config-dir, --config-name, ...) select the same config.
    flags = [f"--{name.replace('_', '-')}={value}" for name in ("config_dir", "config_name", "config_path")
             if (value := getattr(options, name)) is not None]
    invocation = Invocation.parse([*flags, *options.overrides])
    out = options.out or timestamped_output("lr_find")
    writable_folder("--out", out)
    check_arguments(options)
    cfg = job_config(invocation.overrides, invocation.source)
    if cfg.get("gan") is not None:
        raise ConfigError(f"model._target_={cfg.model._target_}: a GAN trains two networks with two "
                          f"optimizers (gan.g, gan.d); the range test needs one loss and one optimizer.")
    trainer = Trainer(cfg, out)
    result = range_test(trainer, options.start, options.end, options.steps, options.smoothing)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result, out / "lr_find.csv")
    draw(result).savefig(out / "lr_find.png", dpi=150)
    onecycle = str(cfg.scheduler.get("_target_", "")).endswith("OneCycle")
    # OneCycle's optimizer.lr is its peak, reached only briefly: the valley's larger, later LR fits it.
    lr, why = (result.valley(), "OneCycle's peak: valley") if onecycle else (result.steepest(), "steepest descent")
    print(f"steepest descent at {result.steepest():.3g}, valley at {result.valley():.3g}")
    print(f"wrote {out / 'lr_find.png'}\nwrote {out / 'lr_find.csv'}")
    if trainer.base_lr.factor != 1.0:  # the test swept the scaled LR; the config holds the unscaled one
        lr /= trainer.base_lr.factor
        why += f", before optimizer.lr_scaling's x{trainer.base_lr.factor:.4g}"
    not_used = unused_settings(trainer)
    record = {"suggested": {"optimizer.lr": lr, "why": why}, "steepest": result.steepest(), "valley": result.valley(),
              "applied": result.applied, "not_used": not_used}
    (out / "lr_find.json").write_text(json.dumps(record, indent=2) + "\n")
    for key, why_not in not_used.items():
        print(f"not used by the range test: {key} ({why_not})")
    print(f"wrote {out / 'lr_find.json'}")
    print(f"use ({why}): optimizer.lr={lr:.3g}")
    return 0


def unused_settings(trainer: Trainer) -> dict[str, str]:
    """The run's settings that shape what a run records but not the range test's updates."""
    unused = {"scheduler": "the LR is the test's own, from --start to --end"}
    if trainer.ema is not None:
        unused["trainer.ema.decay"] = "the test measures the loss of the weights it trains, not of their average"
    if trainer.tc.diagnostics_every is not None:
        unused["trainer.diagnostics_every"] = "the test records the loss at each LR only"
    if trainer.tc.early_stopping.patience is not None:
        unused["trainer.early_stopping.patience"] = "the test runs all of its --steps"
    if trainer.tc.mlflow:
        unused["trainer.mlflow"] = "the test writes lr_find.csv, .png and .json only"
    return unused


def range_test(trainer: Trainer, start: float, end: float, steps: int, smoothing: float) -> RangeTest:
    """The smoothed loss at each LR; the trainer's model and optimizer restored afterwards.

    Each point is an update of the run's own `UpdateStep` (its micro-batches, autocast, clipping
    and non-finite handling), without the schedule, the EMA and the diagnostics: the LR is the test's.
    """
    import torch

    from optbench.data import batch_groups
    from optbench.update import UpdateStep

    model, optimizer = trainer.model, trainer.optimizer
    if trainer.base_lr.value is None:
        raise ConfigError(f"optimizer._target_={trainer.cfg.optimizer._target_}: it has no learning rate to test.")
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    # The swept LR is the run's base LR; each parameter group keeps its ratio to it (layer-wise
    # decay, a head at 10x), as the run's groups do.
    scales = [g.get("initial_lr", g["lr"]) / trainer.base_lr.value for g in optimizer.param_groups]
    update = UpdateStep(model, optimizer, trainer.tc, trainer.device, no_sync=trainer.update.no_sync)
    loss_of = partial(trainer.task.training_loss, trainer.forward_model)
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    groups: Iterator[tuple[list[Batch], int]] = iter(())
    epoch = 0
    model.train()
    try:
        for i in range(steps):
            lr = start * (end / start) ** (i / (steps - 1))
            for group, scale in zip(optimizer.param_groups, scales):
                group["lr"] = lr * scale
            micro_batches = next(groups, None)
            if micro_batches is None:  # a new pass over the data when one runs out
                groups = batch_groups(trainer.data, trainer.tc.seed, epoch, 0, trainer.tc.accumulation_steps)
                epoch += 1
                micro_batches = next(groups)
            loss = update(micro_batches[0], loss_of, i + 1, measure=False).loss
            value = math.nan if loss is None else loss.item()  # None: skipped as non-finite
            if not math.isfinite(value):
                if i == 0:
                    raise ConfigError(f"the loss is {value} from the first step (LR {lr:.3g}): the model or "
                                      f"data give no finite loss to test LRs on; check data.* and model.*.")
                break
            average = smoothing * average + (1 - smoothing) * value
            smoothed = average / (1 - smoothing ** (i + 1))
            if smoothed > DIVERGENCE_FACTOR * best:
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
    finally:
        with torch.no_grad():
            model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        optimizer.zero_grad(set_to_none=True)
    if len(lrs) < 3:
        raise ConfigError(f"--start={start}: the loss diverged after {len(lrs)} steps; start lower.")
    return RangeTest(lrs, losses, trainer.applied([update]))


def write_csv(result: RangeTest, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "smoothed_loss"])
        writer.writerows((repr(lr), repr(loss)) for lr, loss in zip(result.lrs, result.losses))


def draw(result: RangeTest) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), layout="constrained")
    axis = figure.subplots()
    axis.plot(result.lrs, result.losses, linewidth=2, label="smoothed loss")
    axis.axvline(result.steepest(), color="C3", linestyle="--", label=f"steepest descent: {result.steepest():.2e}")
    axis.axvline(result.valley(), color="C2", linestyle=":", label=f"valley: {result.valley():.2e}")
    axis.set_xscale("log")
    axis.set_xlabel("Learning Rate")
    axis.set_ylabel("Loss")
    axis.set_title("LR Range Test")
    axis.grid(True, alpha=0.3)
    axis.legend()
    return figure
