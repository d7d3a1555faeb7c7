"""Per-step overhead of optbench's trainer against a plain PyTorch loop, in the same process.

Both train the same model (ResNet-20), data (the bundled digits, resident on the device),
optimizer (torch's fused AdamW) and schedule (cosine, one LambdaLR) for the same number of
steps from the same seed; the trainer logs at its default frequency (every 10 steps to
metrics.jsonl, TensorBoard and the progress bar). Evaluation and a checkpoint happen once, at
the end, in both. Building the model and data is outside the timings. The two alternate,
REPEATS times each, after one warm-up run each; the medians are compared.

    python benchmarks/overhead.py [--steps 200] [--repeats 5] [--threads N]

With as many threads as cores, any other process on the machine stalls torch's OpenMP
threads and the timings swing by 2x; compare only runs made on a quiet machine.

The last line is the ratio optbench / plain of the time per step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from optbench.config import job_config
from optbench.data import digits
from optbench.models import ResNet
from optbench.schedules import Cosine
from optbench.trainer import Trainer


def plain_loop(steps: int, seed: int, out: Path) -> float:
    torch.manual_seed(seed)
    data = digits(batch_size=128)
    model = ResNet(input_shape=data.spec.input_shape, num_classes=10, depth=20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Cosine(total_steps=steps))
    start = time.perf_counter()
    step, epoch = 0, 0
    while step < steps:
        for x, y in data.train_batches(seed, epoch):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step == steps:
                break
        epoch += 1
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in data.val_batches())
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "acc": correct},
               out / "plain.pt")
    return time.perf_counter() - start


def optbench_loop(steps: int, seed: int, out: Path) -> float:
    cfg = job_config([
        "model=resnet", "optimizer=adamw", "scheduler=cosine", f"trainer.max_steps={steps}",
        f"trainer.seed={seed}", f"trainer.eval_every={steps}",
    ])
    trainer = Trainer(cfg, out / f"run-{time.perf_counter_ns()}")
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plain_loop(20, 0, out), optbench_loop(20, 0, out)  # warm-up: allocator, kernels, imports
        plain, ours = [], []
        for repeat in range(args.repeats):
            plain.append(plain_loop(args.steps, repeat, out))
            ours.append(optbench_loop(args.steps, repeat, out))
    p, o = statistics.median(plain) / args.steps, statistics.median(ours) / args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, "
          f"{args.repeats} repeats (median)")
    print(f"plain PyTorch loop: {p * 1e3:.2f} ms/step  (runs: {', '.join(f'{t:.2f}s' for t in plain)})")
    print(f"optbench trainer:   {o * 1e3:.2f} ms/step  (runs: {', '.join(f'{t:.2f}s' for t in ours)})")
    print(f"overhead ratio (optbench / plain, per step): {o / p:.3f}")


if __name__ == "__main__":
    main()
