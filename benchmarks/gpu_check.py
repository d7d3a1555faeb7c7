"""optbench's CUDA lines in one run: every optimizer config, the precision and speed tricks, a
killed and resumed deterministic run, and the speed figures, each checked; one JSON file with
every figure and every check, a summary table, and exit status 1 when a check fails.

    python benchmarks/gpu_check.py --out gpu_check                 # one GPU; sized for under 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick --out DIR  # tiny sizes: ~75 s of one CPU core

Run it from the repository with optbench installed (`make install`); it needs no network and no
data set (the bundled digits and synthetic data). `phases_s` in the JSON says where the time went.

Each check passes, fails, or is skipped with its reason (what needs CUDA says `skipped (no CUDA)`
on the CPU; a speed goal, set for CUDA, is recorded but not judged elsewhere):

  optimizer NAME [plain|fused]  every config in configs/optimizer/ trains a few steps on the device
        through the CLI (one `optbench run -m` sweep): LAMB, LARS, Lion and Sophia on their plain and
        their fused path (torch.compile on CUDA, optbench's C kernel on the CPU), the 8-bit ones in
        bitsandbytes. Their weights against the same steps on the CPU in float64 (the plain path;
        8-bit against unquantized Adam/AdamW): |w - w_ref| / |w_ref - w_start| within TOLERANCE.
  trick NAME        fp32, fp16 with the GradScaler, bf16, trainer.compile, channels_last and the
        EMA, each to a finished run folder whose summary.json `applied` shows that it took effect.
  fp16 overflow     an update whose scaled gradients overflow fp16 is skipped (weights unchanged,
        loss scale halved) and the run goes on to the end.
  peak memory       a CUDA run records torch.cuda.max_memory_allocated, at least weights + gradients + state.
  resume            a run with trainer.deterministic=true, killed (SIGKILL) mid-way and resumed with
        trainer.resume=auto, ends bitwise equal to an uninterrupted run.
  ddp, fsdp         with 2 GPUs: trainer.devices=2 (NCCL) ends where one process with the same
        global batch ends (skipped on fewer GPUs: a check for a machine with two).
  host syncs NAME   CUDA's sync debug mode counts the host-device synchronisations of training steps
        that log nothing (torch's fused AdamW; optbench's compiled Lion and LAMB): none is allowed.
        A step that logs, or records diagnostics, reads its values and is left out.
  trainer vs plain loop   ResNet-18 on CIFAR-shaped synthetic data: the trainer's step time over a
        plain PyTorch loop's (benchmarks/throughput.py), goal <= 1.05.
  optimizer step    `optbench bench` on 25M parameters: Lion <= 1.2x fused SGD-momentum, LAMB and
        Sophia <= 1.6x fused AdamW; LAMB, LARS and Lion >= 2x faster than timm's and pytorch-optimizer's.
Figures beside the checks: each workload's samples/s with and without AMP, the optimizer step
table, every relative error, and how long each phase took.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from optbench import checkpoint
from optbench.build import accepted, build_optimizer, nested_components
from optbench.commands import bench
from optbench.config import compose, job_config
from optbench.lr_scaling import scaled_optimizer
from optbench.memory import CUDA_MEASURE
from optbench.paths import configs_dir
from optbench.run_folder import RunFolder, write_json_atomic
from optbench.sweep import read_index
from optbench.targets import resolve
from optbench.trainer import Trainer
from throughput import WORKLOADS, batches, build, plain

RESULT = "gpu_check.json"
NO_CUDA = "skipped (no CUDA)"

# |w - w_ref| / |w_ref - w_start| after the steps. float32 against float64 is ~1e-5 here (RAdam's
# tiny first steps 1e-4); a wrong update is off by 0.1 or more. Quantized moments and Muon's
# bfloat16 orthogonalization measure ~3e-2 on the CPU.
TOLERANCE = 1e-3
TOLERANCE_FOR = {"adam8bit": 0.1, "adamw8bit": 0.1, "muon": 0.1}
UNQUANTIZED = {"adam8bit": "adam", "adamw8bit": "adamw"}  # the same settings, in float64 for the reference
INNER = {"lookahead": ["optimizer@optimizer.inner=adamw"]}  # a wrapper needs the optimizer it wraps

# The fp16 overflow: the loss of update OVERFLOW_STEP is multiplied by OVERFLOW_FACTOR, finite in
# float32, but its gradients times the GradScaler's 2^16 exceed fp16's 65504.
OVERFLOW_STEP, OVERFLOW_FACTOR = 3, 1e6

# Speed goals (judged on CUDA): (optimizer, its baseline column in `optbench bench`, at most).
STEP_GOALS = [("lion", "vs_fused_sgd_momentum", 1.2), ("lamb", "vs_fused_adamw", 1.6),
              ("sophia", "vs_fused_adamw", 1.6)]
REFERENCE_SPEEDUP = 2.0  # at least this much faster than timm's and pytorch-optimizer's
OVERHEAD_GOAL = 1.05


@dataclass(frozen=True)
class Sizes:
    optimizer_steps: int  # below Sophia's hessian_interval (10): its estimate, sampled from each device's RNG, stays 0
    trick_model: list[str]  # convolutional, for channels_last
    compile_model: list[str]
    trick_steps: int
    resume_model: list[str]
    resume_steps: int
    kill_after_lines: int  # train lines in metrics.jsonl (one per 10 steps) before the kill
    overhead_workload: list[str]
    overhead_steps: int
    overhead_repeats: int
    bench_params: int  # `optbench bench`'s blocks of a width x width matrix and 3 vectors: 25.2M at width
    bench_width: int  # 2048 is 24 tensors (at 1024, 96: torch.compile unrolls the per-tensor step, slow to compile)
    bench_warmup: int
    bench_repeats: int
    amp_workloads: dict[str, list[str]]
    amp_steps: int
    sync_steps: int  # steps of each run whose synchronisations are counted (the first two are not)


RESNET18_CIFAR = ["model=resnet18", "data=synthetic"]  # synthetic's default shape: 3x32x32, 10 classes
FULL = Sizes(optimizer_steps=6, trick_model=["model=resnet"], compile_model=["model=resnet"], trick_steps=20,
             resume_model=["model=resnet"], resume_steps=1500, kill_after_lines=30,
             overhead_workload=RESNET18_CIFAR, overhead_steps=100, overhead_repeats=3,
             bench_params=25_200_000, bench_width=2048, bench_warmup=5, bench_repeats=30,
             amp_workloads={**WORKLOADS, "resnet18_cifar_synthetic": RESNET18_CIFAR}, amp_steps=100,
             sync_steps=25)
# Every check at tiny sizes; compiling a ResNet for the CPU takes minutes, so the MLP is compiled.
QUICK = Sizes(optimizer_steps=6, trick_model=["model=resnet"], compile_model=["model=mlp"], trick_steps=4,
              resume_model=["model=mlp"], resume_steps=1000, kill_after_lines=20,
              overhead_workload=["model=resnet", "data=synthetic", "data.batch_size=16", "data.train_size=64"],
              overhead_steps=3, overhead_repeats=1, bench_params=130_000, bench_width=256, bench_warmup=1,
              bench_repeats=3, amp_workloads={"digits_resnet20": WORKLOADS["digits_resnet20"]}, amp_steps=3,
              sync_steps=4)
QUIET = ["trainer.progress=false", "trainer.tensorboard=false"]


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skipped (why)
    detail: str = ""
    value: float | None = None
    goal: str | None = None


@dataclass
class Report:
    device: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    phases_s: dict[str, float] = field(default_factory=dict)

    def judge(self, name: str, ok: bool, detail: str, value: float | None = None, goal: str | None = None) -> None:
        self.checks.append(Check(name, "pass" if ok else "fail", detail, value, goal))

    def skip(self, name: str, why: str, detail: str = "", value: float | None = None, goal: str | None = None) -> None:
        self.checks.append(Check(name, why, detail, value, goal))

    def goal(self, name: str, value: float, at_most: float | None = None, at_least: float | None = None,
             detail: str = "") -> None:
        """A speed goal: judged on CUDA, recorded elsewhere."""
        goal = f"<= {at_most}" if at_most is not None else f">= {at_least}"
        if self.device != "cuda":
            self.skip(name, "skipped (goal set for CUDA)", detail, value, goal)
        else:
            ok = value <= at_most if at_most is not None else value >= at_least
            self.judge(name, ok, detail, value, goal)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; one that raises becomes a failed check, and the others still run."""
        start = time.perf_counter()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - any error of a phase is its failure, recorded
            self.judge(f"{name} (crashed)", False, f"{type(e).__name__}: {e}".strip()[:500])
            traceback.print_exc()  # to in_process.log for the phases run in-process
        self.phases_s[name] = round(time.perf_counter() - start, 1)


# ---------------------------------------------------------------------- runs through the CLI


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """`optbench ARGS` in its own process, its output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "optbench", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


@dataclass
class Job:
    name: str  # the check's name
    overrides: list[str]


def optimizer_jobs(steps: int) -> tuple[list[Job], dict[str, str]]:
    """Every optimizer config, optbench's fusable ones on both paths; those that cannot run here, with why."""
    jobs, skipped = [], {}
    for name in sorted(p.stem for p in (configs_dir() / "optimizer").glob("*.yaml")):
        # model=mlp, not the default's batch norm: through it, Adam-type updates turn float32 rounding
        # into differences of a quarter of the move within 6 steps (measured on the CPU, float32 against
        # float64, the same code): no tolerance would then tell a wrong update from rounding.
        base = [f"optimizer={name}", *INNER.get(name, []), "model=mlp", "scheduler=constant",
                f"trainer.max_steps={steps}", f"trainer.eval_every={steps}"]
        target = str(compose(base).optimizer._target_)
        try:
            resolve(target, "optimizer")
        except ImportError as e:
            skipped[f"optimizer {name}"] = f"skipped ({target.split('.')[0]} not installed: {e})"
            continue
        if target.startswith("optbench.") and "fused" in (accepted(resolve(target, "optimizer")) or set()):
            jobs += [Job(f"optimizer {name} plain", [*base, "+optimizer.fused=false"]),
                     Job(f"optimizer {name} fused", [*base, "+optimizer.fused=true"])]
        else:
            jobs.append(Job(f"optimizer {name}", base))
    return jobs, skipped


def tricks(steps: int) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Each trick: its overrides, and what summary.json's `applied` must then say."""
    return {
        "fp32": ([], {"autocast": None, "loss_scaling": False, "compiled": False, "channels_last": False}),
        "fp16 + GradScaler": (["trainer.precision=16"], {"autocast": "float16", "loss_scaling": True}),
        "bf16": (["trainer.precision=bf16"], {"autocast": "bfloat16", "loss_scaling": False}),
        "trainer.compile": (["trainer.compile=true"], {"compiled": True}),
        "channels_last": (["trainer.channels_last=true"], {"channels_last": True}),
        "EMA": (["trainer.ema.decay=0.9"], {"ema_updates": steps}),
    }


def trick_jobs(sizes: Sizes, device: str) -> list[Job]:
    steps = sizes.trick_steps
    return [Job(f"trick {name}", [*(sizes.compile_model if name == "trainer.compile" else sizes.trick_model),
                                  f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", *overrides])
            for name, (overrides, _) in tricks(steps).items()
            if device == "cuda" or name != "fp16 + GradScaler"]


def sweep(jobs: list[Job], device: str, folder: Path) -> subprocess.Popen:
    """Every job in one `optbench run -m` (Hydra sweeper `list`), one process."""
    folder.mkdir(parents=True)
    jobs_file = folder / "jobs.json"
    jobs_file.write_text(json.dumps([job.overrides for job in jobs], indent=1) + "\n")
    return start_cli(["run", "-m", "hydra/sweeper=list", f"hydra.sweeper.jobs_file={jobs_file}",
                      f"hydra.sweep.dir={folder / 'runs'}", *QUIET, f"trainer.device={device}"], folder / "sweep.log")


def job_folders(folder: Path, jobs: list[Job]) -> dict[str, Path | None]:
    """Each job's run folder as the sweep's index records it (None: the job never started)."""
    index = read_index(folder / "runs")
    found = {entry["job"]: folder / "runs" / entry["run_dir"] for entry in index.get("jobs", [])}
    return {job.name: found.get(number) for number, job in enumerate(jobs)}


def finished_run(run: Path | None, steps: int) -> tuple[dict[str, Any], str]:
    """The run's summary, and what is wrong with it as a finished run ('' when nothing)."""
    if run is None:
        return {}, "the job did not start (see sweep/sweep.log)"
    folder = RunFolder(run)
    summary = folder.read_summary()
    if summary.get("status") != "completed" or summary.get("steps") != steps:
        return summary, f"status {summary.get('status', 'none')} after {summary.get('steps')} steps (log: {run})"
    if not (folder.last_checkpoint.is_file() and folder.metrics.is_file()):
        return summary, f"no checkpoint or metrics in {run}"
    if not math.isfinite(summary["final"].get("train/loss") or math.nan):
        return summary, f"final train/loss {summary['final'].get('train/loss')}"
    return summary, ""


# ---------------------------------------------------------------------- optimizers against float64


def plain_path(node: DictConfig) -> None:
    """Set `fused=False` in the optimizer and every optimizer inside it that takes the argument."""
    for sub in [node, *(inner for _, inner in nested_components(node, "optimizer"))]:
        if "fused" in (accepted(resolve(str(sub._target_), "optimizer")) or set()):
            with open_dict(sub):
                sub.fused = False


def float64_reference(overrides: list[str], steps: int, folder: Path) -> tuple[dict, dict]:
    """(start, end) weights of a job's steps (`overrides`: `optimizer=NAME` first) on the CPU in
    float64, on the plain path: the run's initial weights (built on the CPU from the seed),
    batches and optimizer settings."""
    name = overrides[0].partition("=")[2]
    overrides = [f"optimizer={UNQUANTIZED.get(name, name)}", *overrides[1:]]
    trainer = Trainer(job_config([*overrides, "trainer.device=cpu", *QUIET]), folder)
    model = copy.deepcopy(trainer.model).double()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    node, _ = scaled_optimizer(trainer.cfg.optimizer, trainer.effective_batch)  # the run's LR, as the run builds it
    plain_path(node)
    optimizer = build_optimizer(node, model, trainer.cfg.params)
    for x, y in batches(trainer, steps):
        trainer.task.training_loss(model, (x.double(), y)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return start, {n: p.detach() for n, p in model.named_parameters()}


def relative_error(run: Path, start: dict, end: dict) -> float:
    weights = checkpoint.load(RunFolder(run).last_checkpoint)["model"]
    off = sum(float((weights[n].double() - w).square().sum()) for n, w in end.items())
    moved = sum(float((w - start[n]).square().sum()) for n, w in end.items())
    return math.sqrt(off / moved)


def check_optimizers(report: Report, jobs: list[Job], runs: dict[str, Path | None], steps: int, work: Path) -> None:
    errors = {}
    for number, job in enumerate(jobs):
        _, wrong = finished_run(runs[job.name], steps)
        if wrong:
            report.judge(job.name, False, wrong)
            continue
        name = job.overrides[0].partition("=")[2]
        tolerance = TOLERANCE_FOR.get(name, TOLERANCE)
        start, end = float64_reference(job.overrides, steps, work / f"reference-{number}")
        error = relative_error(runs[job.name], start, end)
        errors[job.name] = error
        against = f"unquantized {UNQUANTIZED[name]}" if name in UNQUANTIZED else "the plain path"
        report.judge(job.name, error <= tolerance,
                     f"{steps} steps on {report.device}; against {against} on the CPU in float64",
                     error, f"relative error <= {tolerance:g}")
    report.figures["optimizer_relative_error"] = errors


# ---------------------------------------------------------------------- tricks, memory, fp16 overflow


def check_tricks(report: Report, sizes: Sizes, runs: dict[str, Path | None]) -> None:
    for name, (_, expected) in tricks(sizes.trick_steps).items():
        check = f"trick {name}"
        if check not in runs:
            report.skip(check, NO_CUDA)
            continue
        summary, wrong = finished_run(runs[check], sizes.trick_steps)
        if not wrong:
            applied = summary["applied"]
            said = {key: applied[key] if key in applied else applied["updates"][0][key] for key in expected}
            wrong = "" if said == expected else f"summary.json applied {said}, expected {expected}"
            if name == "EMA" and "val/ema_loss" not in summary["final"]:
                wrong = "no val/ema_loss in the summary"
        report.judge(check, not wrong, wrong or f"completed; applied {expected}")
    if report.device != "cuda":
        report.skip("peak memory", NO_CUDA)
        return
    summary, wrong = finished_run(runs["trick fp32"], sizes.trick_steps)
    peak = summary.get("peak_memory", {})
    # float32 weights and gradients, and the optimizer state: the least that must have been allocated
    floor = 8 * summary.get("params", 0) + summary.get("optimizer_state_bytes", 0)
    ok = not wrong and peak.get("measure") == CUDA_MEASURE and peak.get("bytes", 0) >= floor
    report.judge("peak memory", ok, wrong or f"{peak.get('measure')}: {peak.get('bytes')} bytes (weights + "
                 f"gradients + state: {floor})", peak.get("bytes"))


def fp16_overflow(device: str, overrides: list[str], folder: Path) -> tuple[bool, str]:
    """An fp16 run whose update OVERFLOW_STEP overflows: (whether the GradScaler skipped it and the
    run went on to the end, what was seen)."""
    steps = OVERFLOW_STEP + 3
    trainer = Trainer(job_config([*overrides, "trainer.precision=16", f"trainer.device={device}",
                                  f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", *QUIET]), folder)
    step_through, seen = trainer.train_step, {}

    def train_step(micro_batches: list, measure: bool) -> Any:
        if trainer.step + 1 != OVERFLOW_STEP:
            return step_through(micro_batches, measure)
        seen["before"] = [p.detach().clone() for p in trainer.model.parameters()]
        scale = trainer.update.scaler.get_scale()
        loss = trainer.task.training_loss
        trainer.task.training_loss = lambda model, batch: loss(model, batch) * OVERFLOW_FACTOR
        try:
            result = step_through(micro_batches, measure)
        finally:
            del trainer.task.training_loss  # the class's own again
        seen["unchanged"] = all(torch.equal(a, b) for a, b in zip(seen["before"], trainer.model.parameters()))
        seen["scales"] = (scale, trainer.update.scaler.get_scale())
        return result

    trainer.train_step = train_step
    summary = trainer.fit()
    moved_after = not all(torch.equal(a, b) for a, b in zip(seen.get("before", []), trainer.model.parameters()))
    scales = seen.get("scales", (None, None))
    ok = (summary["status"] == "completed" and seen.get("unchanged") is True and scales[1] == scales[0] / 2
          and moved_after and summary["applied"]["updates"][0]["loss_scaling"])
    return ok, (f"update {OVERFLOW_STEP} (loss x {OVERFLOW_FACTOR:g}): weights unchanged {seen.get('unchanged')}, "
                f"loss scale {scales[0]} -> {scales[1]}; run {summary['status']}, weights moved after it {moved_after}")


# ---------------------------------------------------------------------- kill and resume


def metrics_lines(run: Path) -> int:
    path = RunFolder(run).metrics
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_and_resume(report: Report, sizes: Sizes, command: list[str], folder: Path, whole: subprocess.Popen) -> None:
    """Kill a run mid-way, resume it, compare with the uninterrupted run `whole` (already started)."""
    killed_dir = folder / "killed"
    killed = start_cli([*command, f"hydra.run.dir={killed_dir}"], folder / "killed.log")
    deadline = time.time() + 600
    while killed.poll() is None and metrics_lines(killed_dir) < sizes.kill_after_lines and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    found = checkpoint.newest_complete(RunFolder(killed_dir).checkpoints)
    resumed_at = found[1]["progress"]["step"] if found else None
    if killed.returncode != -signal.SIGKILL or RunFolder(killed_dir).summary.exists() or not resumed_at:
        report.judge("resume", False, f"the run was not killed mid-way after a checkpoint (exit {killed.returncode}, "
                     f"checkpoint at step {resumed_at}); see {folder}")
        whole.wait()
        return
    resumed = start_cli([*command, f"hydra.run.dir={killed_dir}", "trainer.resume=auto"], folder / "resumed.log")
    resumed.wait()
    whole.wait()
    wrong = [f"{what}: {problem}" for what, run in (("resumed", killed_dir), ("uninterrupted", folder / "whole"))
             for problem in [finished_run(run, sizes.resume_steps)[1]] if problem]
    if not wrong:
        a = checkpoint.load(RunFolder(killed_dir).last_checkpoint)["model"]
        b = checkpoint.load(RunFolder(folder / "whole").last_checkpoint)["model"]
        differ = [k for k in b if not torch.equal(a[k], b[k])]
        wrong = [f"{len(differ)} of {len(b)} tensors differ ({', '.join(differ[:3])})"] if differ else []
    report.judge("resume", not wrong, "; ".join(wrong) or
                 f"killed after step {resumed_at} of {sizes.resume_steps}, resumed from its checkpoint: "
                 f"weights bitwise equal to the uninterrupted run's")
    report.figures["resume"] = {"steps": sizes.resume_steps, "resumed_from_step": resumed_at}


def resume_command(sizes: Sizes, device: str) -> list[str]:
    n = sizes.resume_steps
    return ["run", *sizes.resume_model, f"trainer.max_steps={n}", f"trainer.eval_every={n}",
            "trainer.checkpoint_every=50", "trainer.log_every=10", "trainer.deterministic=true", *QUIET,
            f"trainer.device={device}"]


# ---------------------------------------------------------------------- 2 GPUs


def distributed_checks(report: Report, folder: Path) -> None:
    """DDP and FSDP2 on 2 GPUs over NCCL against one process with the same global batch (LAMB's
    trust ratios and clipping on the global gradient, as tests/test_distributed.py does with gloo)."""
    gpus = torch.cuda.device_count() if report.device == "cuda" else 0
    if gpus < 2:
        for name in ("ddp", "fsdp"):
            report.skip(name, NO_CUDA if report.device != "cuda" else f"skipped (needs 2 GPUs; {gpus} here)")
        return
    common = ["run", "data.batch_size=64", "trainer.max_steps=8", "trainer.eval_every=8", "scheduler=constant",
              "optimizer=lamb", "+optimizer.fused=false", "trainer.clip_norm=0.5", "trainer.deterministic=true",
              "trainer.device=cuda", *QUIET]
    runs = {"one": [], "ddp": ["trainer.devices=2", "trainer.strategy=ddp"],
            "fsdp": ["trainer.devices=2", "trainer.strategy=fsdp"]}
    for name, extra in runs.items():
        start_cli([*common, *extra, f"hydra.run.dir={folder / name}"], folder / f"{name}.log").wait()
    one, wrong_one = finished_run(folder / "one", 8)
    for name in ("ddp", "fsdp"):
        summary, wrong = finished_run(folder / name, 8)
        wrong = wrong_one or wrong
        if not wrong:
            off = {k: abs(summary["final"][k] / one["final"][k] - 1) for k in ("train/loss", "val/loss")}
            wrong = "" if max(off.values()) <= 1e-4 else f"final losses off by {off} relative"
        report.judge(name, not wrong, wrong or "2 processes on 2 GPUs end with one process's final losses (1e-4)")


# ---------------------------------------------------------------------- speed


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """In-process runs print their summary tables and logs to stderr: into `log` instead (a
    failing phase's traceback too)."""
    with log.open("a") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield


SYNC_OPTIMIZERS = ["adamw", "lion", "lamb"]  # torch's fused step; optbench's compiled ones (float64 scalars)


def host_syncs(report: Report, sizes: Sizes, device: str, folder: Path) -> None:
    """Host-device synchronisations in the steps of a run that log nothing (`count_syncs`): none allowed."""
    for name in SYNC_OPTIMIZERS:
        if device != "cuda":
            report.skip(f"host syncs {name}", NO_CUDA)
            continue
        syncs, watched = count_syncs(build([*sizes.overhead_workload, f"optimizer={name}", f"trainer.device={device}"],
                                           sizes.sync_steps, folder))
        first = f"; first: {syncs[0][:300]}" if syncs else ""
        detail = f"{len(syncs)} in {len(watched)} steps that log nothing{first}"
        report.judge(f"host syncs {name}", bool(watched) and not syncs, detail, value=len(syncs), goal="0")


def count_syncs(trainer: Trainer, debug_mode: Any = torch.cuda.set_sync_debug_mode) -> tuple[list[str], set[int]]:
    """Train `trainer` to its end with CUDA's sync debug mode warning at each host-device
    synchronisation (a read of a value, a copy to the host, a copy from pageable memory) in the steps
    that log nothing: the warnings, and those steps. A step that writes a train line or a diagnostics
    record reads values, and the first two set things up: they are left out."""
    tc, syncs, watched = trainer.tc, [], set()

    def quiet_step(number: int) -> bool:
        reads = number % tc.log_every == 0 or number == trainer.total_steps or (
            tc.diagnostics_every is not None and number % tc.diagnostics_every == 0)
        return number > 2 and not reads

    def counted(method: Any, number_of: Any) -> Any:
        def run(*args: Any) -> Any:
            number = number_of()
            if not quiet_step(number):
                return method(*args)
            watched.add(number)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                debug_mode("warn")
                try:
                    return method(*args)
                finally:
                    debug_mode("default")
                    syncs.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))
        return run

    # the step itself, then the bookkeeping after it (the step counter has moved on by then)
    trainer.train_step = counted(trainer.train_step, lambda: trainer.step + 1)
    trainer._after_step = counted(trainer._after_step, lambda: trainer.step)
    trainer.fit()
    return syncs, watched


def trainer_vs_plain(report: Report, sizes: Sizes, device: str, folder: Path) -> None:
    """The trainer's samples/s and a plain loop's on the same model, batches and optimizer,
    alternating after one warm-up (benchmarks/throughput.py); the medians' ratio."""
    overrides = [*sizes.overhead_workload, f"trainer.device={device}"]
    n = sizes.overhead_steps
    build(overrides, n, folder).fit()  # warm-up: kernels, cuDNN's algorithm search, the allocator
    ours, theirs = [], []
    for _ in range(sizes.overhead_repeats):
        trainer = build(overrides, n, folder)
        theirs.append(plain(trainer, n))
        ours.append(trainer.fit()["samples_per_s"])
    ratio = statistics.median(theirs) / statistics.median(ours)  # = trainer step time / plain step time
    report.figures["trainer_vs_plain"] = {"workload": overrides, "steps": n, "plain_samples_per_s": theirs,
                                          "trainer_samples_per_s": ours, "step_time_ratio": ratio}
    report.goal("trainer vs plain loop", ratio, at_most=OVERHEAD_GOAL,
                detail=f"{' '.join(sizes.overhead_workload)}: step time ratio, median of {sizes.overhead_repeats}")


def optimizer_steps(report: Report, sizes: Sizes, device: str) -> list[dict[str, Any]]:
    """`optbench bench`'s measurement of LAMB, LARS, Lion and Sophia beside fused AdamW and SGD and
    the other libraries' implementations, on the device; the goals judged from its table."""
    torch.set_flush_denormal(True)  # as `optbench bench`: decaying states must not hit denormals
    params = bench.parameter_set(sizes.bench_params, sizes.bench_width, device)
    n_params = sum(p.numel() for p in params)
    skipped: dict[str, str] = {}
    found = bench.candidates(["lamb", "lars", "lion", "sophia"], params, skipped)
    bench.measure(found, sizes.bench_warmup, sizes.bench_repeats)
    table = bench.rows(found, n_params)
    report.figures["optimizer_step"] = {"params": n_params, "tensors": len(params), "rows": table, "skipped": skipped}
    ours = {r["optimizer"]: r for r in table if r["implementation"] == "optbench"}
    for name, column, limit in STEP_GOALS:
        report.goal(f"optimizer step {name}", ours[name][column], at_most=limit,
                    detail=f"{n_params / 1e6:.1f}M parameters, {column}")
    for name in ("lamb", "lars", "lion"):
        for library in ("timm", "pytorch-optimizer"):
            theirs = [r for r in table if r["optimizer"] == name and r["implementation"] == library]
            check = f"optimizer step {name} vs {library}"
            if not theirs:
                report.skip(check, f"skipped ({library} not installed)")
                continue
            report.goal(check, theirs[0]["step_ms"] / ours[name]["step_ms"], at_least=REFERENCE_SPEEDUP,
                        detail=f"{library}'s step time / optbench's")
    return table


def amp_throughput(report: Report, sizes: Sizes, device: str, folder: Path) -> None:
    """Each workload's samples/s (the trainer's clock) at each precision, after a warm-up run."""
    precisions = ["32", "bf16", "16"] if device == "cuda" else ["32", "bf16"]
    figures: dict[str, dict[str, float]] = {}
    for name, overrides in sizes.amp_workloads.items():
        overrides = [*overrides, f"trainer.device={device}"]
        figures[name] = {}
        try:
            build(overrides, sizes.amp_steps, folder).fit()  # warm-up
            for precision in precisions:
                summary = build([*overrides, f"trainer.precision={precision}"], sizes.amp_steps, folder).fit()
                figures[name][precision] = summary["samples_per_s"]
        except Exception as e:  # noqa: BLE001 - a workload that fails is a failed check; the others still run
            report.judge(f"amp {name}", False, f"{type(e).__name__}: {e}"[:500])
    report.figures["samples_per_s"] = figures


# ---------------------------------------------------------------------- report


def meta(device: str, quick: bool) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "gpus": torch.cuda.device_count() if device == "cuda" else 0, "quick": quick,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "command": " ".join(["python", *sys.argv]),
        "not_covered": ["2-GPU DDP/FSDP2 over NCCL run only with 2 GPUs (checks `ddp`, `fsdp`); "
                        "gloo on the CPU is tests/test_distributed.py"],
    }


def print_report(report: Report, table: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))  # the details stay readable in a log
    if table:
        steps = report.figures["optimizer_step"]
        bench.print_table(table, f"optimizer step on {report.device}, {steps['params'] / 1e6:.1f}M parameters "
                                 f"in {steps['tensors']} tensors")
    amp = report.figures.get("samples_per_s", {})
    if amp:
        view = Table(title="samples/s (the trainer's clock)")
        for header in ("workload", "fp32", "bf16", "fp16"):
            view.add_column(header, justify="left" if header == "workload" else "right")
        for name, by in amp.items():
            view.add_row(name, *(f"{by[p]:,.0f}" if p in by else "-" for p in ("32", "bf16", "16")))
        console.print(view)
    view = Table(title=f"gpu_check on {report.device}")
    for header in ("check", "status", "value", "goal", "detail"):
        view.add_column(header, overflow="fold")
    colour = {"pass": "green", "fail": "red"}
    for c in report.checks:
        value = "" if c.value is None else f"{c.value:.3g}"
        view.add_row(c.name, f"[{colour.get(c.status, 'yellow')}]{c.status}", value, c.goal or "", c.detail)
    console.print(view)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {RESULT} and the runs (new)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the checks run, the figures mean little")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda: no CUDA device here; --device cpu runs the CPU checks.", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"gpu_check: --out {args.out}: not empty; give a new folder (an earlier check is never "
              f"overwritten).", file=sys.stderr)
        return 2
    sizes, device, out = (QUICK if args.quick else FULL), args.device, args.out.resolve()
    report, began, table = Report(device), time.perf_counter(), []
    out.mkdir(parents=True, exist_ok=True)
    opt_jobs, not_here = optimizer_jobs(sizes.optimizer_steps)
    jobs = [*opt_jobs, *trick_jobs(sizes, device)]

    # The sweep and the uninterrupted resume run in the background while a run is killed and resumed.
    with report.phase("runs through the CLI"):
        swept = sweep(jobs, device, out / "sweep")
        command = resume_command(sizes, device)
        whole = start_cli([*command, f"hydra.run.dir={out / 'resume' / 'whole'}"], out / "resume" / "whole.log")
        kill_and_resume(report, sizes, command, out / "resume", whole)
        swept.wait()
    runs = job_folders(out / "sweep", jobs)
    with tempfile.TemporaryDirectory() as tmp, quiet(out / "in_process.log"):
        work = Path(tmp)
        with report.phase("optimizers against float64"):
            for name, why in not_here.items():
                report.skip(name, why)
            check_optimizers(report, opt_jobs, runs, sizes.optimizer_steps, work)
        with report.phase("tricks"):
            check_tricks(report, sizes, runs)
            if device == "cuda":
                ok, detail = fp16_overflow(device, sizes.trick_model, work / "fp16-overflow")
                report.judge("fp16 overflow", ok, detail)
            else:
                report.skip("fp16 overflow", NO_CUDA)
        with report.phase("2 GPUs"):
            distributed_checks(report, out / "distributed")
        with report.phase("host syncs"):
            host_syncs(report, sizes, device, work)
        # Timings last, with nothing else running.
        with report.phase("trainer vs plain loop"):
            trainer_vs_plain(report, sizes, device, work)
        with report.phase("optimizer step"):
            table = optimizer_steps(report, sizes, device)
        with report.phase("samples/s with and without AMP"):
            amp_throughput(report, sizes, device, work)

    counts = {s: sum(c.status.startswith(s) for c in report.checks) for s in ("pass", "fail", "skipped")}
    write_json_atomic(out / RESULT, {
        **meta(device, args.quick), "elapsed_s": round(time.perf_counter() - began, 1), "phases_s": report.phases_s,
        "counts": counts, "checks": [asdict(c) for c in report.checks], "figures": report.figures,
    })
    print_report(report, table)
    print(f"gpu_check: {counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped in "
          f"{time.perf_counter() - began:.0f} s; {out / RESULT}")
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
