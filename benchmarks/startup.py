"""Start-up time of the `optbench` command against the bare import of its dependencies.

Each command runs as a fresh process, as a user runs it, and so does the baseline
`python -c "import torch, torchvision, hydra, omegaconf, rich, tensorboard"`: what any program
built on these libraries pays before doing anything. They alternate, REPEATS times each, and
medians are compared. Measured:

- `optbench run` with the default configuration (train, evaluate, write the run folder), in a
  temporary folder; its held-out accuracy is printed too;
- `optbench run --help`, `optbench list` and `optbench check`;
- with `--also-run OVERRIDES`, `optbench run OVERRIDES` too (say `model=mlp`, the default model
  before issue 17), in the same rounds: under load, compare it with the default run, not with
  figures taken at another time.

    python benchmarks/startup.py [--repeats 5] [--also-run model=mlp]

Other processes on the machine slow both sides; compare only figures taken on a quiet machine.
The last line is the ratio default run / bare import (the goal is at most 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_IMPORT = "import torch, torchvision, hydra, omegaconf, rich, tensorboard"


def timed(command: list[str], cwd: Path) -> float:
    """Seconds that `command` takes as a process (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--also-run", nargs="+", metavar="OVERRIDE", default=[],
                        help="time `optbench run OVERRIDE...` as well, alternating with the others")
    args = parser.parse_args()

    optbench = [sys.executable, "-m", "optbench"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs = {"optbench run": []}  # runs: their overrides; each gets a new run folder, below
        if args.also_run:
            runs[f"optbench run {' '.join(args.also_run)}"] = args.also_run
        commands = {
            "bare import": [sys.executable, "-c", BARE_IMPORT],
            **dict.fromkeys(runs),
            "optbench run --help": [*optbench, "run", "--help"],
            "optbench list": [*optbench, "list"],
            "optbench check": [*optbench, "check"],
        }
        run_dirs = {name: folder / f"run{i}" for i, name in enumerate(runs)}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(args.repeats):
            for name, command in commands.items():
                if name in runs:
                    command = [*optbench, "run", *runs[name], f"hydra.run.dir={run_dirs[name]}-{repeat}"]
                times[name].append(timed(command, folder))
        accuracies = {name: json.loads((Path(f"{run_dir}-0") / "summary.json").read_text())["final"]["val/acc"]
                      for name, run_dir in run_dirs.items()}

    medians = {name: statistics.median(values) for name, values in times.items()}
    bare = medians["bare import"]
    width = max(map(len, medians)) + 2
    print(f"{'command':<{width}}{'median (s)':>12}{'/ bare import':>15}   ({args.repeats} runs each)")
    for name, median in medians.items():
        print(f"{name:<{width}}{median:>12.2f}{median / bare:>15.2f}")
    for name, accuracy in accuracies.items():
        print(f"{name} held-out accuracy: {accuracy:.4f}")
    # Other processes slow both sides, and not equally: a ratio taken under load says little.
    print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    for name in list(runs)[1:]:
        print(f"default run / {name}: {medians['optbench run'] / medians[name]:.2f}")
    print(f"default run / bare import: {medians['optbench run'] / bare:.2f}")


if __name__ == "__main__":
    main()
