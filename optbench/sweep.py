"""Sweeps that never lose a result: the `sweep.json` index, skipping finished jobs on a re-run,
resuming interrupted ones.

Every job of a multirun goes through `run_in_sweep`, in whatever process the launcher runs it
(Hydra's basic launcher: this one; joblib: a worker). The job records itself in the sweep
folder's `sweep.json` when it starts and when it ends, under a file lock and with an atomic
rename, so that the index is right whichever process finishes first, and the process that
launched the sweep reads its exit status back from there.

A re-run of the same command in the same folder (`hydra.sweep.dir=...`, which the sweep prints)
runs nothing that already has a result: a completed or diverged job is skipped, and so is one that
failed before its first checkpoint (it would fail again the same way); an interrupted one, one
killed after a checkpoint, or one that failed after a checkpoint (a full disk, a damaged file)
continues from its checkpoint. Each job holds its folder's lock while it runs (one writer); a
re-run while a job's folder is still written by a live process is refused.
"""

from __future__ import annotations

import fcntl
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from optbench import preemption
from optbench.commands.common import override_key, task_overrides
from optbench.errors import ConfigError
from optbench.folder_lock import FolderLock, refuse_if_held
from optbench.run_folder import FINISHED, RunFolder, read_json, write_json_atomic

INDEX = "sweep.json"
LOCK = ".sweep.lock"
INTERRUPTED = 1  # exit status of a job stopped by a signal (its summary says `interrupted`)
SWEEP_DIR_KEY = "hydra.sweep.dir"


def prepare(overrides: list[str], cfg: DictConfig) -> tuple[list[str], Path]:
    """Before Hydra launches anything: fix the sweep folder and open (or check) its index.

    `cfg` is the composed config of the first job (it holds the `hydra` node). The sweep folder is
    resolved here once, so that its timestamp is known, and passed to Hydra as an override: the
    launching process then knows where to read the results back. A folder that already holds a
    sweep is continued only by the same overrides; anything else would overwrite its jobs.
    Returns `overrides` with `hydra.sweep.dir` set, and that folder.
    """
    sweep_dir = Path(str(cfg.hydra.sweep.dir))  # resolved once: `${now:...}` changes with every read
    wanted = task_overrides(overrides)
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        index = read_index(sweep_dir)
        if not index:
            raise ConfigError(f"{SWEEP_DIR_KEY}={sweep_dir}: that folder holds something other than an optbench "
                              f"sweep (no {INDEX}); choose another folder. optbench never overwrites a run.")
        if index.get("overrides") != wanted:
            raise ConfigError(
                f"{SWEEP_DIR_KEY}={sweep_dir}: that folder holds the sweep of other overrides "
                f"({' '.join(index.get('overrides', []))}); re-run exactly that command to continue it, "
                f"or choose another folder. optbench never overwrites a run.")
        for job in index.get("jobs", []):  # a job still written (by workers of a killed launcher)
            refuse_if_held(sweep_dir / job["run_dir"], f"{SWEEP_DIR_KEY}={sweep_dir}: job {job['job']} "
                                                        f"({sweep_dir / job['run_dir']})")
        with locked(sweep_dir):
            index = read_index(sweep_dir)
            index.pop("stopped", None)  # a new invocation: jobs may start again
            write_index(sweep_dir, index)
        print(f"optbench: continuing the sweep in {sweep_dir}: finished jobs are skipped, "
              f"interrupted ones resume.", file=sys.stderr)
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with locked(sweep_dir):
            write_index(sweep_dir, {"overrides": wanted, "jobs": []})
    others = [o for o in overrides if override_key(o) != SWEEP_DIR_KEY]
    return [*others, f"{SWEEP_DIR_KEY}={sweep_dir}"], sweep_dir


def finish(sweep_dir: Path, rerun_hint: bool = True) -> int:
    """The sweep's exit status from its index (the jobs may have run in other processes)."""
    index = read_index(sweep_dir)
    jobs = index.get("jobs", [])
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs"
    hint = f" The same command with {SWEEP_DIR_KEY}={sweep_dir} re-runs only what has no result yet." if rerun_hint else ""
    print(f"optbench: sweep {sweep_dir}: {summary}; index {sweep_dir / INDEX}.{hint}", file=sys.stderr)
    if index.get("stopped"):
        return INTERRUPTED
    return max((int(job.get("exit_code", 0)) for job in jobs), default=0)


def run_in_sweep(cfg: DictConfig, run_job: Callable[[DictConfig], int], in_launcher_process: bool) -> float:
    """Run one job of a sweep unless it already has a result; record it in the index.

    Returns the job's best value of the monitored metric (`trainer.monitor`), NaN when it did not
    complete: the value that an optimizing sweeper (Optuna) minimizes or maximizes. A job stopped
    by a signal stops the whole sweep: the index is marked, so jobs that start later in other
    processes do nothing, and in the launching process the sweep ends at once.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    run_dir = Path(str(hydra_cfg.runtime.output_dir))
    num = int(hydra_cfg.job.num)
    overrides = task_overrides([str(o) for o in hydra_cfg.overrides.task])
    index = read_index(sweep_dir)
    if index.get("stopped"):
        print(f"optbench: job {num} not started: the sweep was stopped.", file=sys.stderr)
        return math.nan
    earlier = job_record(index, num)
    if earlier is not None and earlier.get("overrides") != overrides:
        print(f"optbench: error: job {num} ({' '.join(overrides)}): its folder {run_dir} holds another job "
              f"({' '.join(earlier.get('overrides', []))}); not run. Use another {SWEEP_DIR_KEY}.", file=sys.stderr)
        return math.nan
    folder = RunFolder(run_dir)
    summary = folder.read_summary()
    status = summary.get("status") or (earlier or {}).get("status")
    if status in FINISHED or (status == "failed" and not folder.checkpoints.is_dir()):
        print(f"optbench: job {num} ({' '.join(overrides)}): {status} earlier, skipped.", file=sys.stderr)
        return monitored(cfg, summary)
    if not in_launcher_process and "joblib" in str(hydra_cfg.launcher._target_).lower():
        preemption.stop_when_orphaned()  # a worker dies with its launcher
    from optbench.distributed import world

    try:  # rank 0 writes the folder of a job of several processes (a multi-task SLURM job)
        lock = FolderLock.take(run_dir, f"job {num} ({run_dir})") if world().is_main else None
    except ConfigError as e:  # started in the meantime by another invocation of the sweep
        print(f"optbench: job {num} not run: {e}", file=sys.stderr)
        return math.nan
    try:
        if folder.has_started() and cfg.trainer.resume is None:
            with open_dict(cfg):
                cfg.trainer.resume = "auto"  # an interrupted, killed or failed job continues from its checkpoint
        job = {"job": num, "overrides": overrides, "run_dir": os.path.relpath(run_dir, sweep_dir)}
        record(sweep_dir, {**job, "status": "running", "started": time.time()})
        exit_code = run_job(cfg)
    finally:
        if lock is not None:
            lock.release()
    summary = folder.read_summary()
    status = summary.get("status", "failed")  # none: bad input found at run time (exit status 2)
    entry = {**job, "status": status, "exit_code": exit_code, "final": summary.get("final", {}),
             "best": summary.get("best", {}), "finished": time.time()}
    if "error" in summary:
        entry["error"] = summary["error"]
    record(sweep_dir, entry, stop=status == "interrupted")
    preemption.exit_if_orphaned()  # nobody collects this worker's result
    if status == "interrupted" and in_launcher_process:
        raise SystemExit(INTERRUPTED)  # a stop signal ends the whole sweep, not just this job
    return monitored(cfg, summary)


def constant_keys(overrides: list[str]) -> set[str]:
    """Keys that a sweep's command gives one value (`a=1`, not `a=1,2`): the same in every job."""
    from optbench.config import sweep_choices

    return {override_key(choices[0]) for choices in sweep_choices(overrides) if len(choices) == 1}


def monitored(cfg: DictConfig, summary: dict[str, Any]) -> float:
    """The job's best `val/<trainer.monitor>`; NaN unless it completed (it ranks last)."""
    if summary.get("status") != "completed":
        return math.nan
    value = summary.get("best", {}).get(f"val/{cfg.trainer.monitor}")
    return math.nan if value is None else float(value)


def job_record(index: dict[str, Any], num: int) -> dict[str, Any] | None:
    return next((job for job in index.get("jobs", []) if job["job"] == num), None)


def record(sweep_dir: Path, entry: dict[str, Any], stop: bool = False) -> None:
    """Put one job's entry into the index (replacing its earlier one), atomically. In a job of
    several processes (a multi-task SLURM job), rank 0 alone writes."""
    from optbench.distributed import world

    if not world().is_main:
        return
    with locked(sweep_dir):
        index = read_index(sweep_dir)
        jobs = [job for job in index.get("jobs", []) if job["job"] != entry["job"]]
        index["jobs"] = sorted([*jobs, entry], key=lambda job: job["job"])
        if stop:
            index["stopped"] = True
        write_index(sweep_dir, index)


@contextmanager
def locked(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep's lock: jobs in other processes update the index one at a time."""
    with open(sweep_dir / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_index(sweep_dir: Path) -> dict[str, Any]:
    return read_json(sweep_dir / INDEX)


def write_index(sweep_dir: Path, index: dict[str, Any]) -> None:
    write_json_atomic(sweep_dir / INDEX, index)  # a reader never sees half of it
