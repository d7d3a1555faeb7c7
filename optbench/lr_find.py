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
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from optbench.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from optbench.trainer import Trainer

DIVERGENCE_FACTOR = 4.0  # stop once the smoothed loss is this many times its best
SKIP_START = 3  # the first points' slope says more about the smoothing than about the LR


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed

    def steepest(self) -> float:
        """LR where the smoothed loss falls fastest against log LR."""
        slopes = [(self.losses[i + 1] - self.losses[i - 1]) / math.log(self.lrs[i + 1] / self.lrs[i - 1])
                  for i in range(max(1, SKIP_START), len(self.lrs) - 1)]
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
    parser.add_argument("--smoothing", type=float, default=0.98, help="EMA factor of the loss (default 0.98)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/lr_find/DATE/TIME)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for optbench run")
    return parser.parse_intermixed_args(args)  # flags may come after the overrides


def main(args: list[str]) -> int:
    from optbench.config import job_config, register_recipes
    from optbench.trainer import Trainer

    options = parse_args(args)
    out = options.out or Path("outputs", "lr_find", datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f"))
    try:
        if not 0 < options.start < options.end:
            raise ConfigError(f"--start={options.start} --end={options.end}: need 0 < start < end.")
        if options.steps < 5 or not 0 <= options.smoothing < 1:
            raise ConfigError(f"--steps={options.steps} --smoothing={options.smoothing}: need steps >= 5 "
                              f"and 0 <= smoothing < 1.")
        register_recipes()
        cfg = job_config(options.overrides)
        trainer = Trainer(cfg, out)
        result = range_test(trainer, options.start, options.end, options.steps, options.smoothing)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result, out / "lr_find.csv")
    draw(result).savefig(out / "lr_find.png", dpi=150)
    onecycle = str(cfg.scheduler.get("_target_", "")).endswith("OneCycle")
    # OneCycle's optimizer.lr is its peak, reached only briefly: the valley's larger, later LR fits it.
    lr, why = (result.valley(), "OneCycle's peak: valley") if onecycle else (result.steepest(), "steepest descent")
    print(f"steepest descent at {result.steepest():.3g}, valley at {result.valley():.3g}")
    print(f"wrote {out / 'lr_find.png'}\nwrote {out / 'lr_find.csv'}")
    print(f"use ({why}): optimizer.lr={lr:.3g}")
    return 0


def range_test(trainer: Trainer, start: float, end: float, steps: int, smoothing: float) -> RangeTest:
    """The smoothed loss at each LR; the trainer's model and optimizer restored afterwards."""
    import torch

    model, optimizer = trainer.model, trainer.optimizer
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    # Parameter groups keep their LR ratios (layer-wise decay, a head at 10x) during the test.
    first = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"]) or 1.0
    scales = [g.get("initial_lr", g["lr"]) / first for g in optimizer.param_groups]
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    batches = iter(())
    epoch = 0
    model.train()
    try:
        for i in range(steps):
            lr = start * (end / start) ** (i / (steps - 1))
            for group, scale in zip(optimizer.param_groups, scales):
                group["lr"] = lr * scale
            batch = next(batches, None)
            if batch is None:  # a new pass over the data when one runs out
                batches = trainer.data.train_batches(trainer.tc.seed, epoch)
                epoch += 1
                batch = next(batches)
            loss = trainer.task.training_loss(model, batch)
            value = loss.item()
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
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        with torch.no_grad():
            model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        optimizer.zero_grad(set_to_none=True)
    if len(lrs) < 3:
        raise ConfigError(f"--start={start}: the loss diverged after {len(lrs)} steps; start lower.")
    return RangeTest(lrs, losses)


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
