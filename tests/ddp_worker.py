"""Training inside each rank of a torchrun launch, for test_distributed.py (which cannot reach in):

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT

(one launch for all, as starting processes is what costs): DDP with 3 micro-batches per step,
counting the gradient all-reduces with a comm hook, once as the trainer runs (no_sync on the
micro-batches that do not step) and once synchronising every micro-batch; FSDP2 against DDP; a DDP
run stopped by a signal to one rank and an FSDP2 run stopped after 4 steps, each resumed from its
checkpoint. Rank 0 saves what it measured to OUT (torch.save).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from optbench.config import job_config
from optbench.trainer import Trainer

# model=mlp: no batch statistics, which each rank would take over its own share of a batch.
QUIET = ["model=mlp", "trainer.progress=false", "trainer.tensorboard=false", "trainer.deterministic=true",
         "trainer.diagnostics_every=null", "data.batch_size=64", "trainer.log_every=2"]


def full_parameters(trainer: Trainer) -> list[torch.Tensor]:
    """The model's parameters, whole (FSDP2 holds a shard of each on every rank)."""
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for p in trainer.model.parameters()]


def count_allreduces(run_dir: Path, sync_every_micro_batch: bool) -> tuple[int, list[torch.Tensor]]:
    trainer = Trainer(job_config([*QUIET, "trainer.max_steps=4", "trainer.accumulation_steps=3"]), run_dir)
    calls = []

    # No annotations: DDP checks them against the real classes, and this module's are strings.
    def counting_allreduce(state, bucket):  # type: ignore[no-untyped-def]
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    trainer.parallel_model.register_comm_hook(None, counting_allreduce)
    if sync_every_micro_batch:
        trainer.update.no_sync = None  # every backward pass communicates
    trainer.fit()
    return len(calls), full_parameters(trainer)


def train_steps_logged(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m["step"] for m in map(json.loads, lines) if m["split"] == "train"]


def strategy_runs(root: Path) -> dict[str, object]:
    """DDP and FSDP2 for 8 steps; DDP stopped by a signal to rank 1 alone, then resumed; FSDP2
    stopped after 4 steps, then resumed."""
    common = [*QUIET, "optimizer=lamb", "+optimizer.fused=false", "scheduler=constant", "trainer.accumulation_steps=2",
              "trainer.clip_norm=0.5", "trainer.eval_every=4"]
    found: dict[str, object] = {}
    for strategy in ("ddp", "fsdp"):
        trainer = Trainer(job_config([*common, f"trainer.strategy={strategy}", "trainer.max_steps=8"]),
                          root / strategy)
        trainer.fit()
        found[strategy] = full_parameters(trainer)

    original = Trainer.train_step

    def preempted(self: Trainer, *args: object, **kwargs: object) -> object:
        if self.step == 2 and self.world.rank == 1:  # SIGTERM reaches rank 1 only, during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    Trainer.train_step = preempted  # type: ignore[method-assign]
    stopped = Trainer(job_config([*common, "trainer.strategy=ddp", "trainer.max_steps=8"]), root / "ddp_split").fit()
    Trainer.train_step = original  # type: ignore[method-assign]
    found["ddp_stopped"] = (stopped["status"], stopped["steps"])

    Trainer(job_config([*common, "trainer.strategy=fsdp", "trainer.max_steps=4"]), root / "fsdp_split").fit()
    for strategy in ("ddp", "fsdp"):
        resumed = Trainer(job_config([*common, f"trainer.strategy={strategy}", "trainer.max_steps=8",
                                      "trainer.resume=auto"]), root / f"{strategy}_split")
        resumed.fit()
        found[f"{strategy}_resumed"] = full_parameters(resumed)
        found[f"{strategy}_resumed_logged"] = train_steps_logged(root / f"{strategy}_split")
    checkpoints = root / "fsdp_split" / "checkpoints"
    found["fsdp_checkpoints"] = sorted(p.name for p in checkpoints.iterdir())
    found["fsdp_last"] = torch.load(checkpoints / "last.pt", weights_only=True)
    return found


def main() -> None:
    out = Path(sys.argv[1])
    root = out.parent / "runs"
    result = {"no_sync": count_allreduces(root / "no_sync", False),
              "every_micro_batch": count_allreduces(root / "every", True), **strategy_runs(root)}
    if torch.distributed.get_rank() == 0:
        torch.save(result, out)


if __name__ == "__main__":
    main()
