"""Samples/s of each CPU-sized workload through optbench against the same model in a plain loop.

For each workload, optbench's trainer runs the workload's config for STEPS optimizer steps (logging
at its default frequency, evaluating and checkpointing once at the end, outside its training
clock) and reports samples/s in summary.json. The plain loop trains a fresh copy of the same model
on the same device-resident batches (sliced inside the timed loop, as the trainer does), with the
same optimizer class, settings and parameter groups, the same LR multiplier (in a LambdaLR) and
the same loss, for the same steps, timed around the loop alone. The two alternate REPEATS times
after one warm-up each, in the same process; the medians are compared (ratio = optbench / plain, higher is better).

    python benchmarks/throughput.py [--steps 150] [--repeats 5] [--threads 1] [--only gan_ring ...]

One thread by default: these models are small, and on a shared 2-core machine two threads that
wait for each other make both loops slower and noisier.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from optbench.build import build_optimizer
from optbench.config import job_config
from optbench.gan_trainer import GANTrainer, trainer_class
from optbench.trainer import Trainer

WORKLOADS = {
    "gan_ring": ["recipe=gan_ring"],
    "char_lstm": ["recipe=rnn_lstm", "model.hidden=128", "data.seq_len=64", "data.batch_size=32",
                  "data.max_chars=300000"],
    "counting_gru": ["model=rnn", "model.cell=gru", "model.hidden=64", "data=counting"],
    "bert_mlm": ["model=bert", "data=masked_chars", "model.dim=64", "model.depth=2", "model.heads=2",
                 "data.seq_len=32", "data.batch_size=32", "data.max_chars=300000"],
    "digits_resnet20": ["recipe=digits_resnet20"],
    # The ViT family: the small ViT on the 8x8 digits in 2x2 patches (16 tokens), at half width.
    "digits_vit": ["model=vit", "model.patch_size=2", "model.dim=96", "model.depth=4"],
}


def build(overrides: list[str], steps: int, out: Path) -> Trainer:
    cfg = job_config([*overrides, f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
                      "trainer.progress=false"])
    return trainer_class(cfg)(cfg, out / f"run-{time.perf_counter_ns()}")


def optimizer_like(
    trainer: Trainer, node, net: torch.nn.Module, scheduler: LambdaLR
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """The configured optimizer class, settings and parameter groups, and the trainer's LR
    multiplier in a LambdaLR."""
    optimizer = build_optimizer(node, net, trainer.cfg.params)  # the run's own builder: same groups and settings
    return optimizer, LambdaLR(optimizer, scheduler.lr_lambdas[0])


def batches(trainer: Trainer, steps: int):
    """The trainer's own data order, for `steps` batches (the plain loop reads the same tensors)."""
    epoch = 0
    while True:
        for batch in trainer.data.train_batches(0, epoch):
            yield batch
            steps -= 1
            if steps == 0:
                return
        epoch += 1


def samples(trainer: Trainer, steps: int) -> int:
    return sum(len(y) for _, y in batches(trainer, steps))


def finished(device: torch.device) -> float:
    """The clock once the device has done all the work queued (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plain(trainer: Trainer, steps: int) -> float:
    """Samples/s of a plain PyTorch loop on a copy of the trainer's model."""
    model = copy.deepcopy(trainer.model).train()
    if isinstance(trainer, GANTrainer):
        g_opt, g_sched = optimizer_like(trainer, trainer.cfg.gan.g, model.generator, trainer.scheduler)
        d_opt, d_sched = optimizer_like(trainer, trainer.cfg.gan.d, model.discriminator, trainer.d_update.scheduler)
        start = finished(trainer.device)
        for real, _ in batches(trainer, steps):
            ones, zeros = torch.ones(len(real), 1, device=real.device), torch.zeros(len(real), 1, device=real.device)
            fake = model.sample(len(real))
            d_loss = (F.binary_cross_entropy_with_logits(model.discriminator(real), ones)
                      + F.binary_cross_entropy_with_logits(model.discriminator(fake.detach()), zeros))
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            g_loss = F.binary_cross_entropy_with_logits(model.discriminator(fake), ones)
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            g_sched.step()
            d_sched.step()
        return samples(trainer, steps) / (finished(trainer.device) - start)
    optimizer, scheduler = optimizer_like(trainer, trainer.cfg.optimizer, model, trainer.scheduler)
    clip = trainer.tc.clip_norm
    start = finished(trainer.device)
    for batch in batches(trainer, steps):
        loss = trainer.task.training_loss(model, batch)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return samples(trainer, steps) / (finished(trainer.device) - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every optbench run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps, {args.repeats} repeats (median)")
    print(f"{'workload':<16} {'plain samples/s':>16} {'optbench samples/s':>19} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            overrides = [*WORKLOADS[name], *args.extra]
            build(overrides, 10, Path(tmp)).fit()  # warm-up: imports, allocator, kernels
            ours, theirs = [], []
            for _ in range(args.repeats):
                trainer = build(overrides, args.steps, Path(tmp))
                theirs.append(plain(trainer, args.steps))
                ours.append(trainer.fit()["samples_per_s"])
            o, p = statistics.median(ours), statistics.median(theirs)
            print(f"{name:<16} {p:>16,.0f} {o:>19,.0f} {o / p:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
