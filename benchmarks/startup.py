"""Start-up time of the `optbench` command against the bare import of its dependencies.

Each command runs as a fresh process, as a user runs it, and so does the baseline
`python -c "import torch, torchvision, hydra, omegaconf, rich, tensorboard"`: what any program
built on these libraries pays before doing anything. They alternate, REPEATS times each, and
medians are compared. Measured:

- `optbench run` with the default configuration (train, evaluate, write the run folder), in a
  temporary folder; its held-out accuracy is printed too;
- `optbench run --help`, `optbench list` and `optbench check`.

    python benchmarks/startup.py [--repeats 5]

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
    args = parser.parse_args()

    optbench = [sys.executable, "-m", "optbench"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        commands = {
            "bare import": [sys.executable, "-c", BARE_IMPORT],
            "optbench run": None,  # a new run folder each time, below
            "optbench run --help": [*optbench, "run", "--help"],
            "optbench list": [*optbench, "list"],
            "optbench check": [*optbench, "check"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(args.repeats):
            for name, command in commands.items():
                run_dir = folder / f"run{repeat}"
                times[name].append(timed(command or [*optbench, "run", f"hydra.run.dir={run_dir}"], folder))
        accuracy = json.loads((folder / "run0" / "summary.json").read_text())["final"]["val/acc"]

    medians = {name: statistics.median(values) for name, values in times.items()}
    bare = medians["bare import"]
    print(f"{'command':<22}{'median (s)':>12}{'/ bare import':>15}   ({args.repeats} runs each)")
    for name, median in medians.items():
        print(f"{name:<22}{median:>12.2f}{median / bare:>15.2f}")
    print(f"default run held-out accuracy: {accuracy:.4f}")
    # Other processes slow both sides, and not equally: a ratio taken under load says little.
    print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"default run / bare import: {medians['optbench run'] / bare:.2f}")


if __name__ == "__main__":
    main()
