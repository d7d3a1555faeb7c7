"""Per-step overhead of optbench's trainer against a plain PyTorch loop (and Lightning), in one process.

Every arm trains the same model (ResNet-20 by default, built from optbench's config), data (the
bundled digits, batch 128, resident in memory), optimizer (torch's fused AdamW with optbench's
default parameter groups: no decay on 1-D tensors) and schedule (cosine, one LambdaLR) for the
same number of steps from the same seed. optbench runs its defaults: a train line every 10 steps
to metrics.jsonl, TensorBoard and the progress line, diagnostics every 100 steps. Lightning (the
third arm, when `pip install 'optbench[bench]'` installed it) logs the loss and the LR to
TensorBoard every 10 steps and refreshes its bar as often. Each run evaluates once and writes one
checkpoint, at the end.

The per-step time is the time between the ends of the first and the last optimizer step (an
optimizer step hook stamps them), divided by the steps between: the loop alone, logging steps
included; on the wall clock and in CPU time of the process (all its threads), which other work on
the machine disturbs less. Everything else a run costs (start-up, TensorBoard writer, evaluation, checkpoint,
summary) is a fixed cost, printed separately. The arms alternate, in a rotating order, REPEATS
times each after one short warm-up run each; min and median over the repeats are printed. Then one
run pairs the two step by step (`paired`): on a machine whose speed drifts between runs, the figure
that drift disturbs least.

    python benchmarks/overhead.py [--steps 1000] [--repeats 3] [--threads 1] [--model resnet|mlp]

Any other process on the machine stalls torch's threads: quote the load (`uptime`) beside a
figure. The last line is the per-step ratio optbench / plain loop.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import torch
import torch.nn.functional as F

import optbench.trainer
from optbench.build import build_data, build_model
from optbench.config import job_config
from optbench.metrics_log import MetricsLog
from optbench.progress import print_summary
from optbench.run_folder import RunFolder
from optbench.schedules import Cosine
from optbench.trainer import Trainer

LOG_EVERY = 10
T = TypeVar("T")


@dataclass
class Timing:
    """One run of one arm: optimizer-step end stamps (wall clock and the process's CPU time), the
    whole run, and named fixed costs."""

    stamps: list[float] = field(default_factory=list)
    cpu_stamps: list[float] = field(default_factory=list)
    total: float = 0.0
    parts: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def stamp(self, *_: Any) -> None:
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())

    @property
    def per_step(self) -> float:
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)

    @property
    def cpu_per_step(self) -> float:
        """CPU seconds a step took, every thread of the process counted (TensorBoard's writer too):
        what other processes on the machine disturb far less than the wall clock."""
        return (self.cpu_stamps[-1] - self.cpu_stamps[0]) / (len(self.cpu_stamps) - 1)

    def fixed(self) -> dict[str, float]:
        """Fixed costs by name; `other` is what neither the steps nor a named part took."""
        other = self.total - self.per_step * len(self.stamps) - sum(self.parts.values())
        return {**self.parts, "other (first step, folder, bar)": other}

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.parts[name] += time.perf_counter() - start
        return run


def overrides(model: str, steps: int, seed: int) -> list[str]:
    return [f"model={model}", "optimizer=adamw", "scheduler=cosine", f"trainer.max_steps={steps}",
            f"trainer.seed={seed}", f"trainer.eval_every={steps}", f"trainer.log_every={LOG_EVERY}"]


def parts(model: str, steps: int, seed: int) -> tuple[Any, torch.nn.Module, torch.optim.Optimizer, Any]:
    """The data, model, optimizer (optbench's default groups, by hand) and schedule of a plain run."""
    cfg = job_config(overrides(model, steps, seed))
    torch.manual_seed(seed)
    data = build_data(cfg.data)
    net = build_model(cfg.model, data)
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay}],
                                  lr=1e-3, weight_decay=0.01, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Cosine(total_steps=steps))
    return data, net, optimizer, scheduler


def epochs(data: Any, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from data.train_batches(seed, epoch)
        epoch += 1


def plain_step(step: int, batch: tuple[torch.Tensor, torch.Tensor], net: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Step number `step` of the plain loop, with its print every LOG_EVERY steps."""
    x, y = batch
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if step % LOG_EVERY == 0:
        print(f"step {step} loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.3g}")


def plain_loop(model: str, steps: int, seed: int, out: Path) -> Timing:
    timing = Timing()
    start = time.perf_counter()
    data, net, optimizer, scheduler = parts(model, steps, seed)
    optimizer.register_step_post_hook(timing.stamp)
    timing.parts["start-up (model, data, optimizer)"] = time.perf_counter() - start
    for step, batch in zip(range(1, steps + 1), epochs(data, seed)):
        plain_step(step, batch, net, optimizer, scheduler)

    @torch.no_grad()
    def evaluate() -> int:
        net.eval()
        return sum(int((net(x).argmax(1) == y).sum()) for x, y in data.val_batches())

    correct = timing.timed("evaluation", evaluate)()
    timing.timed("checkpoint", torch.save)(
        {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "acc": correct}, out / "plain.pt")
    timing.total = time.perf_counter() - start
    return timing


def optbench_loop(model: str, steps: int, seed: int, out: Path) -> Timing:
    timing = Timing()
    start = time.perf_counter()
    trainer = Trainer(job_config(overrides(model, steps, seed)), out / f"run-{time.perf_counter_ns()}")
    trainer.optimizer.register_step_post_hook(timing.stamp)
    timing.parts["start-up (model, data, optimizer)"] = time.perf_counter() - start

    def metrics_log(*args: Any, **kwargs: Any) -> Any:
        log = MetricsLog(*args, **kwargs)
        log.close = timing.timed(summary, log.close)
        return log

    trainer.evaluate = timing.timed("evaluation", trainer.evaluate)  # best.pt is written inside it
    trainer.save_checkpoint = timing.timed("checkpoint", trainer.save_checkpoint)
    summary = "summary (summary.json, tb close, table)"
    trainer.summary = timing.timed(summary, trainer.summary)
    writer = timing.timed("TensorBoard writer, metrics files", metrics_log)
    with mock.patch.object(optbench.trainer, "MetricsLog", writer), \
            mock.patch.object(optbench.trainer, "print_summary", timing.timed(summary, print_summary)), \
            mock.patch.object(RunFolder, "write_summary", timing.timed(summary, RunFolder.write_summary)):
        trainer.fit()
    timing.total = time.perf_counter() - start
    return timing


def paired(model: str, steps: int, seed: int, out: Path) -> tuple[list[float], list[float]]:
    """Per-step times of both arms in one run, step by step: before each of the trainer's steps, one
    step of the plain loop (on its own copy of the model, optimizer and batches). A machine that
    slows down slows both alike, which alternating whole runs cannot promise. The trainer's time of
    a step is the time between two of its steps less the plain step's: its loop, logging included.

    Each arm fetches its next batch after its step, as a `for` loop over batches does: so each
    fetch follows its own arm's step. (With the plain step fetching first, its fetch came right
    after the trainer's fetch of the same kind, with that code and data still in the CPU's caches,
    which a plain loop on its own never has: 15-80 us a step in the plain loop's favour on the
    MLP, measured in one process.)"""
    data, net, optimizer, scheduler = parts(model, steps, seed)
    batches = epochs(data, seed)
    trainer = Trainer(job_config(overrides(model, steps, seed)), out / f"run-{time.perf_counter_ns()}")
    starts, plain = [], []
    trainer_step = trainer.train_step
    batch = [next(batches)]

    def both(micro_batches: Any, measure: bool) -> Any:
        start = time.perf_counter()
        plain_step(len(starts) + 1, batch[0], net, optimizer, scheduler)
        batch[0] = next(batches)
        starts.append(start)
        plain.append(time.perf_counter() - start)
        return trainer_step(micro_batches, measure)

    trainer.train_step = both
    trainer.fit()
    ours = [after - before - p for before, after, p in zip(starts, starts[1:], plain)]
    return plain[:len(ours)], ours


def lightning_loop(model: str, steps: int, seed: int, out: Path) -> Timing:
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    for name in ("lightning.pytorch", "lightning.fabric"):  # its notices go to a handler of their own
        logging.getLogger(name).setLevel(logging.ERROR)
    timing = Timing()
    start = time.perf_counter()
    data, net, optimizer, scheduler = parts(model, steps, seed)
    optimizer.register_step_post_hook(timing.stamp)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            loss = F.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            self.log("val/acc", (self.net(batch[0]).argmax(1) == batch[1]).float().mean())

        def configure_optimizers(self) -> Any:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class Passes:
        """Lightning's view of optbench's batches: `batches(n)` on the n-th pass (an epoch's new order)."""

        def __init__(self, batches: Callable[[int], Iterator[Any]], length: int) -> None:
            self.batches, self.length, self.passes = batches, length, 0

        def __len__(self) -> int:
            return self.length

        def __iter__(self) -> Iterator[Any]:
            self.passes += 1
            return self.batches(self.passes - 1)

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=TensorBoardLogger(out / "lightning"),
                        log_every_n_steps=LOG_EVERY,
                        callbacks=[LearningRateMonitor("step"), TQDMProgressBar(LOG_EVERY)],
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    module = Module()
    timing.parts["start-up (model, data, optimizer)"] = time.perf_counter() - start
    trainer.fit(module, train_dataloaders=Passes(partial(data.train_batches, seed), data.batches_per_epoch))
    timing.timed("evaluation", trainer.validate)(
        module, dataloaders=Passes(lambda _: data.val_batches(), len(list(data.val_batches()))), verbose=False)
    timing.timed("checkpoint", trainer.save_checkpoint)(out / "lightning.ckpt")
    timing.total = time.perf_counter() - start
    return timing


def lightning_installed() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def quiet(run: Callable[..., T], *args: Any) -> T:
    """One run with its progress lines, logs and tables out of the report, after a full garbage
    collection: no run pays for collecting what the runs before it left (a full collection of the
    ~500,000 objects that torch, Hydra and Lightning hold took a large part of a second)."""
    gc.collect()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        return run(*args)


def ms(values: list[float]) -> str:
    return f"min {min(values) * 1e3:7.2f}  median {statistics.median(values) * 1e3:7.2f}"


def ratios(mine: list[Timing], plain: list[Timing]) -> str:
    def ratio(pick: Callable[[list[float]], float], per_step: Callable[[Timing], float]) -> float:
        return pick([per_step(t) for t in mine]) / pick([per_step(t) for t in plain])

    wall, cpu = (lambda t: t.per_step), (lambda t: t.cpu_per_step)
    return (f"{ratio(statistics.median, wall):.3f} wall clock (median), {ratio(min, wall):.3f} (min); "
            f"{ratio(statistics.median, cpu):.3f} CPU time (median), {ratio(min, cpu):.3f} (min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--model", default="resnet", help="optbench model config (resnet: ResNet-20, mlp)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps={args.steps}: the per-step time needs at least 2 steps")
    torch.set_num_threads(args.threads)
    arms = {"plain PyTorch loop": plain_loop, "optbench Trainer": optbench_loop}
    if lightning_installed():
        arms["Lightning"] = lightning_loop
    names = list(arms)
    runs: dict[str, list[Timing]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name in names:  # warm-up: allocator, kernels, imports
            quiet(arms[name], args.model, min(args.steps, 20), 0, out)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                runs[name].append(quiet(arms[name], args.model, args.steps, repeat, out))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), model={args.model}, {args.steps} steps, "
          f"{args.repeats} repeats; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("fixed costs per run (ms, median over repeats):")
    for name in names:
        fixed = [t.fixed() for t in runs[name]]
        print(f"  {name}: " + ", ".join(f"{part} {statistics.median(f[part] for f in fixed) * 1e3:.1f}"
                                        for part in fixed[0]))
    print("per-step time (ms): wall clock | CPU time of the process")
    for name in names:
        print(f"  {name:20s} {ms([t.per_step for t in runs[name]])} | {ms([t.cpu_per_step for t in runs[name]])}")
    with tempfile.TemporaryDirectory() as tmp:
        plain, ours = quiet(paired, args.model, args.steps, 0, Path(tmp))
    plain_ms, ours_ms = statistics.median(plain) * 1e3, statistics.median(ours) * 1e3
    extra_us = [(o - p) * 1e6 for o, p in zip(ours, plain)]  # what the trainer adds to each step
    pair_ratio = statistics.median(o / p for o, p in zip(ours, plain))  # each step against its own pair
    print(f"paired step by step in one run ({len(ours)} steps): plain loop median {plain_ms:.2f} ms, "
          f"optbench Trainer {ours_ms:.2f} ms: {ours_ms / plain_ms:.3f}; median of the pairs' ratios "
          f"{pair_ratio:.3f}; means {statistics.mean(ours) / statistics.mean(plain):.3f}; the trainer's step "
          f"minus the plain one: median {statistics.median(extra_us):.0f} us, mean {statistics.mean(extra_us):.0f} us")
    for name in reversed(names[1:]):  # optbench's ratio last
        print(f"overhead ratio ({name} / plain, per step): {ratios(runs[name], runs[names[0]])}")


if __name__ == "__main__":
    main()
