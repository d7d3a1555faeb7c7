"""Soak test (not part of CI): many short runs with random faults; no result may be lost.

Each run is a real `optbench run` process on a tiny configuration, given one random fault:
  none      a normal run                          -> completed
  nan       optimizer.lr=1e6 (the loss blows up)  -> diverged, exit 0
  skip      same, with trainer.nonfinite=skip      -> completed or diverged, recorded
  kill      SIGKILL at a random moment, then the same command with trainer.resume=auto until it
            completes                              -> completed, every step logged exactly once
  sigterm   SIGTERM at a random moment, then resumed -> completed
  bad       a random bad override                  -> exit 2, no run folder
  diskfull  SIGKILL at a random moment, then resumed on a "full disk" (RLIMIT_FSIZE: no file may
            grow past 256 kB, so the next checkpoint fails) -> exit 1, one line naming the file,
            no traceback, no temporary file, last.pt and previous.pt unchanged; then resumed
            with room                              -> completed, every step logged exactly once
  writers   two processes on one folder at once (two fresh runs, or two resumes after a SIGKILL)
                                                   -> one trains; the other exits 2 naming its
            PID, or finds the run finished (exit 0, nothing written) -> completed, each step once
  launcher  a joblib sweep of one job whose launcher gets SIGKILL at a random moment
                                                   -> the worker is gone within 10 s; re-running
            the sweep completes the job, every step logged exactly once
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
import resource
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
FAULTS = ["none", "nan", "skip", "kill", "sigterm", "bad", "diskfull", "writers", "launcher"]
FULL_DISK_BYTES = 256_000  # the run's checkpoints are ~1 MB: the first one written does not fit


def optbench(args: list[str], cwd: Path, file_size_limit: int | None = None) -> subprocess.Popen:
    def limit() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))

    return subprocess.Popen([sys.executable, "-m", "optbench", "run", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if file_size_limit else None)


def one_run(index: int, fault: str, rng: random.Random, root: Path, steps: int) -> tuple[str, str]:
    run_dir = root / f"run{index:03d}"
    args = [*BASE, f"trainer.max_steps={steps}", f"trainer.seed={index}", f"hydra.run.dir={run_dir}"]
    if fault == "launcher":
        return fault, launcher_killed(index, rng, root, steps)
    if fault == "writers":
        return fault, two_writers(args, rng, root, run_dir, steps)
    if fault == "diskfull":
        wrong = disk_full(args, rng, root, run_dir)
        if wrong:
            return fault, wrong
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
    while fault in ("kill", "sigterm", "diskfull") and status(run_dir) != "completed" and attempts < 5:
        attempts += 1
        resumed = optbench([*args, "trainer.resume=auto"], root)
        resumed.communicate()
    final = status(run_dir)
    if fault in ("kill", "sigterm", "diskfull"):
        wrong = logged_once(run_dir, steps)
        if wrong:
            return fault, f"{wrong} after {attempts} resumes"
    expected = {"none": {"completed"}, "nan": {"diverged"}, "skip": {"completed", "diverged"},
                "kill": {"completed"}, "sigterm": {"completed"}, "diskfull": {"completed"}}[fault]
    return fault, final if final in expected else f"WRONG: {final}"


def logged_once(run_dir: Path, steps: int) -> str | None:
    """What is wrong with the train lines of metrics.jsonl (None: every logged step exactly once)."""
    if not (run_dir / "metrics.jsonl").exists():
        return f"WRONG: {status(run_dir)}, no metrics.jsonl"
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"split": "train"' in line]
    if logged != sorted(set(logged)) or len(logged) != steps // LOG_EVERY:
        return f"WRONG: logged steps {len(logged)} (duplicates or gaps)"
    return None


def disk_full(args: list[str], rng: random.Random, root: Path, run_dir: Path) -> str | None:
    """SIGKILL mid-run, then a resume on a full disk: what went wrong (None: as promised). The
    caller then resumes with room."""
    process = optbench(args, root)
    time.sleep(rng.uniform(2.0, 6.0))
    process.kill()
    process.communicate()
    checkpoints = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.pt")}
    full = optbench([*args, "trainer.resume=auto"], root, FULL_DISK_BYTES)
    _, err = full.communicate()
    if status(run_dir) == "completed":  # killed after its end: nothing left to write
        return None
    lines = err.strip().splitlines()
    if full.returncode != 1 or len(lines) != 1 or "optbench: error: [Errno 27] File too large: '" not in lines[0]:
        return f"WRONG: full disk: exit {full.returncode}, {err.strip()[-200:]!r}"
    if list(run_dir.rglob("*.tmp")):
        return "WRONG: full disk: temporary files left"
    if any((run_dir / "checkpoints" / name).read_bytes() != data for name, data in checkpoints.items()):
        return "WRONG: full disk: a checkpoint changed"
    return None


def two_writers(args: list[str], rng: random.Random, root: Path, run_dir: Path, steps: int) -> str:
    """Two processes on one folder at once: fresh, or resuming after a SIGKILL."""
    if rng.random() < 0.5:
        first = optbench(args, root)
        time.sleep(rng.uniform(2.0, 6.0))
        first.kill()
        first.communicate()
        args = [*args, "trainer.resume=auto"]
    pair = [optbench(args, root) for _ in range(2)]
    outcomes = [(p.communicate()[1], p.returncode) for p in pair]
    refused = [(err, code) for err, code in outcomes
               if (code == 2 and ("is writing that run folder" in err or "already holds a run" in err))
               or (code == 0 and "that run is finished" in err)]
    if len(refused) != 1 or not any(code == 0 for _, code in outcomes):
        return f"WRONG: exits {[code for _, code in outcomes]}: {[err.strip()[-160:] for err, _ in outcomes]}"
    final = status(run_dir)
    return logged_once(run_dir, steps) or (final if final == "completed" else f"WRONG: {final}")


def launcher_killed(index: int, rng: random.Random, root: Path, steps: int) -> str:
    """A joblib sweep of one job: SIGKILL to its launcher; its worker must stop; re-runs complete it."""
    sweep_dir = root / f"run{index:03d}"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", *BASE, f"trainer.max_steps={steps}",
            f"trainer.seed={index}", f"hydra.sweep.dir={sweep_dir}"]
    launcher = optbench(args, root)
    lock = sweep_dir / "0" / ".optbench.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.1)
    time.sleep(rng.uniform(0.0, 4.0))
    launcher.kill()
    launcher.communicate()
    worker = int(lock.read_text()) if lock.exists() and lock.read_text().strip() else None
    killed = time.time()
    while worker is not None and time.time() - killed < 10 and alive(worker):
        time.sleep(0.1)
    if worker is not None and alive(worker):
        return f"WRONG: worker {worker} outlived its launcher"
    for _ in range(5):
        if status(sweep_dir / "0") == "completed":
            break
        optbench(args, root).communicate()
    final = status(sweep_dir / "0")
    return logged_once(sweep_dir / "0", steps) or (final if final == "completed" else f"WRONG: {final}")


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
        lost = [d.name for d in Path(tmp).glob("run*") if status(d) is None and status(d / "0") is None]
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
