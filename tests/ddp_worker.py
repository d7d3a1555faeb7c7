"""Training inside each rank of a torchrun launch, for test_distributed.py (which cannot reach in):

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py MODE OUT

MODE `accumulation`: DDP with 3 micro-batches per step, counting the gradient all-reduces with a
comm hook, once as the trainer runs (no_sync on the micro-batches that do not step) and once
synchronising every micro-batch. MODE `fsdp`: FSDP2 against DDP, and an FSDP2 run stopped after
4 steps and resumed from its checkpoint. Rank 0 saves what it measured to OUT (torch.save).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from optbench.config import job_config
from optbench.trainer import Trainer

QUIET = ["trainer.progress=false", "trainer.tensorboard=false", "trainer.deterministic=true",
         "trainer.diagnostics_every=null", "data.batch_size=64", "trainer.log_every=2"]


def full_parameters(trainer: Trainer) -> list[torch.Tensor]:
    """The model's parameters, whole (FSDP2 holds a shard of each on every rank)."""
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for p in trainer.model.parameters()]


def count_allreduces(run_dir: Path, sync_every_micro_batch: bool) -> tuple[int, list[torch.Tensor]]:
    trainer = Trainer(job_config([*QUIET, "trainer.max_steps=4", "trainer.accumulation_steps=3"]), run_dir)
    calls = []

    def counting_allreduce(state: object, bucket: torch.distributed.GradBucket) -> torch.futures.Future:
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    trainer.parallel_model.register_comm_hook(None, counting_allreduce)
    if sync_every_micro_batch:
        trainer._gradient_sync = lambda last: nullcontext()  # type: ignore[method-assign]
    trainer.fit()
    return len(calls), full_parameters(trainer)


def fsdp_runs(root: Path) -> dict[str, list[torch.Tensor]]:
    common = [*QUIET, "optimizer=lamb", "scheduler=constant", "trainer.accumulation_steps=2",
              "trainer.clip_norm=0.5", "trainer.eval_every=4"]
    found = {}
    for strategy in ("ddp", "fsdp"):
        trainer = Trainer(job_config([*common, f"trainer.strategy={strategy}", "trainer.max_steps=8"]),
                          root / strategy)
        trainer.fit()
        found[strategy] = full_parameters(trainer)
    first = Trainer(job_config([*common, "trainer.strategy=fsdp", "trainer.max_steps=4"]), root / "split")
    first.fit()
    resumed = Trainer(job_config([*common, "trainer.strategy=fsdp", "trainer.max_steps=8", "trainer.resume=auto"]),
                      root / "split")
    summary = resumed.fit()
    found["fsdp_resumed"] = full_parameters(resumed)
    found["resumed_steps"] = [torch.tensor(summary["steps"])]
    return found


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    root = out.parent / f"{mode}-runs"
    if mode == "accumulation":
        result = {"no_sync": count_allreduces(root / "no_sync", False),
                  "every_micro_batch": count_allreduces(root / "every", True)}
    else:
        result = fsdp_runs(root)
    if torch.distributed.get_rank() == 0:
        torch.save(result, out)


if __name__ == "__main__":
    main()
