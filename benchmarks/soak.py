"""Soak test (not part of CI): many short runs with random faults; no result may be lost.

Each run is a real `optbench run` process on a tiny configuration, given one random fault:
  none      a normal run                          -> completed
  nan       optimizer.lr=1e6 (the loss blows up)  -> diverged, exit 0
  skip      same, with trainer.nonfinite=skip      -> completed or diverged, recorded
  kill      SIGKILL at a random moment, then the same command with trainer.resume=auto until it
            completes                              -> completed, every step logged exactly once
  sigterm   SIGTERM at a random moment, then resumed -> completed
  bad       a random bad override                  -> exit 2, no run folder
At the end every run folder must hold a summary.json with a final status, and the table of
outcomes is printed. Two runs go at a time.

    python benchmarks/soak.py [--runs 200] [--seed 0] [--faults none kill ...] [--steps 400]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LOG_EVERY = 10
BASE = [f"trainer.log_every={LOG_EVERY}", "trainer.eval_every=100", "trainer.checkpoint_every=20",
        "trainer.progress=false", "trainer.tensorboard=false"]
BAD = ["optimizer=nope", "optimizer.lr=-1", "trainer.max_steps=abc", "data.batch_size=0", "trainer.eppochs=2",
       "scheduler.warmup=-3", "trainer.precision=8", "params=layer_decay params.decay=2"]
FAULTS = ["none", "nan", "skip", "kill", "sigterm", "bad"]


def optbench(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "optbench", "run", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def one_run(index: int, fault: str, rng: random.Random, root: Path, steps: int) -> tuple[str, str]:
    run_dir = root / f"run{index:03d}"
    args = [*BASE, f"trainer.max_steps={steps}", f"trainer.seed={index}", f"hydra.run.dir={run_dir}"]
    if fault == "bad":
        process = optbench([*args, *rng.choice(BAD).split()], root)
        _, err = process.communicate()
        ok = process.returncode == 2 and "Traceback" not in err and not run_dir.exists()
        return fault, "exit 2, no folder" if ok else f"WRONG: exit {process.returncode}, folder {run_dir.exists()}"
    if fault in ("nan", "skip"):
        args += ["optimizer=sgd", "optimizer.lr=1e6"] + (["trainer.nonfinite=skip"] if fault == "skip" else [])
    process = optbench(args, root)
    if fault in ("kill", "sigterm"):
        time.sleep(rng.uniform(2.0, 6.0))  # start-up takes ~2 s; the run ~1-3 s more
        process.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGTERM)
    process.communicate()
    attempts = 0
    while fault in ("kill", "sigterm") and status(run_dir) != "completed" and attempts < 5:
        attempts += 1
        resumed = optbench([*args, "trainer.resume=auto"], root)
        resumed.communicate()
    final = status(run_dir)
    if fault in ("kill", "sigterm"):
        if not (run_dir / "metrics.jsonl").exists():
            return fault, f"WRONG: {final}, no metrics.jsonl after {attempts} resumes"
        logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                  if '"split": "train"' in line]
        if logged != sorted(set(logged)) or len(logged) != steps // LOG_EVERY:
            return fault, f"WRONG: logged steps {len(logged)} (duplicates or gaps)"
    expected = {"none": {"completed"}, "nan": {"diverged"}, "skip": {"completed", "diverged"},
                "kill": {"completed"}, "sigterm": {"completed"}}[fault]
    return fault, final if final in expected else f"WRONG: {final}"


def status(run_dir: Path) -> str | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=FAULTS, help="the faults to draw from")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of each run")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    plan = [(i, rng.choice(args.faults), random.Random(rng.random())) for i in range(args.runs)]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda p: one_run(p[0], p[1], p[2], Path(tmp), args.steps), plan))
        lost = [d.name for d in Path(tmp).glob("run*") if status(d) is None]
    table = collections.Counter(outcomes)
    for (fault, outcome), count in sorted(table.items()):
        print(f"{fault:<8} {outcome:<40} {count}")
    wrong = sum(c for (_, o), c in table.items() if o.startswith("WRONG"))
    print(f"{args.runs} runs in {time.time() - started:.0f} s; folders without a final status: {len(lost)}; "
          f"wrong outcomes: {wrong}")
    sys.exit(1 if wrong or lost else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
