"""Cost of optimizer diagnostics and of the weight EMA, against the same run without them.

ResNet-20 on the bundled digits (device-resident), AdamW, STEPS optimizer steps, evaluation
and checkpoint only at the end. Three configurations alternate REPEATS times after a warm-up:
  baseline     trainer.diagnostics_every=null, no EMA
  diagnostics  trainer.diagnostics_every=100 (the default frequency)
  ema          trainer.ema.decay=0.999
The trainer's own training clock (evaluation excluded) over the median run gives the time per
step. Last lines: the ratios diagnostics/baseline and ema/baseline.

    python benchmarks/tricks_cost.py [--steps 300] [--repeats 5] [--threads N]

Other processes on the machine swing the timings far more than these costs: compare only
runs made on a quiet machine; one thread is the least sensitive.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from optbench.config import job_config
from optbench.trainer import Trainer

COMMON = ["model=resnet", "trainer.progress=false", "trainer.tensorboard=false"]
VARIANTS = {
    "baseline": ["trainer.diagnostics_every=null"],
    "diagnostics": ["trainer.diagnostics_every=100"],
    "ema": ["trainer.diagnostics_every=null", "trainer.ema.decay=0.999"],
}


def seconds_per_step(overrides: list[str], steps: int, out: Path) -> float:
    cfg = job_config([*COMMON, *overrides, f"trainer.max_steps={steps}", f"trainer.eval_every={steps}"])
    trainer = Trainer(cfg, out)
    trainer.fit()
    return trainer.train_time / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():  # warm-up
            seconds_per_step(overrides, 20, Path(tmp) / f"warm-{name}")
        for repeat in range(args.repeats):
            for name, overrides in VARIANTS.items():
                times[name].append(seconds_per_step(overrides, args.steps, Path(tmp) / f"{name}-{repeat}"))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-20 on digits, "
          f"{args.steps} steps, {args.repeats} repeats (median)")
    for name, t in median.items():
        print(f"{name:<12} {t * 1e3:7.2f} ms/step  (runs: {', '.join(f'{x * 1e3:.1f}' for x in times[name])})")
    print(f"diagnostics / baseline: {median['diagnostics'] / median['baseline']:.3f}")
    print(f"ema / baseline: {median['ema'] / median['baseline']:.3f}")


if __name__ == "__main__":
    main()
