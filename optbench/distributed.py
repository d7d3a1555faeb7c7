"""Training on many processes started by torchrun: DDP or FSDP2, with one run folder.

`torchrun --nproc_per_node=N -m optbench run ...` starts N copies of optbench; torchrun gives each
its place in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Here:

- which strategy a run uses (`trainer.strategy`: auto is DDP under torchrun, else one process),
  and the checks that refuse what cannot work, before anything runs;
- the process group: gloo for CPU tensors, NCCL for CUDA ones;
- one run folder for all ranks: rank 0's folder name is sent to the others before Hydra makes it;
- the reductions the trainer needs (metric sums, a stop request that every rank must obey).

`data.batch_size` is the global batch of one micro-step: each of the N processes reads
`data.batch_size / N` of it, so a config means the same optimization on any number of processes.
"""

from __future__ import annotations

import atexit
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optbench.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

# What torchrun sets in each process's environment (the "env://" rendezvous).
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
# Hydra overrides for ranks other than 0: no .hydra/ folder and no log file of their own in the
# run folder (rank 0 writes them); their log lines go to the console.
QUIET_RANK = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (logs, TensorBoard, checkpoints, summary)."""
        return self.rank == 0


def world() -> World:
    """The world torchrun describes in the environment; one process without it."""
    if not all(name in os.environ for name in TORCHRUN_VARS):
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device `trainer.device` names; under torchrun, CUDA is this node's GPU number LOCAL_RANK."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda: no CUDA device is available here; use auto or cpu.")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def resolve_strategy(strategy: str, processes: int | None = None) -> str:
    """`none`, `ddp` or `fsdp`: `auto` is DDP when the run has more than one process (torchrun's,
    unless `processes` says how many there will be)."""
    if strategy == "auto":
        return "ddp" if (processes or world().size) > 1 else "none"
    return strategy


def devices_to_start(cfg: DictConfig) -> int:
    """Processes that optbench itself starts for this run (`trainer.devices`); 1 under torchrun,
    which has started them already."""
    devices = cfg.trainer.get("devices", 1)
    return devices if isinstance(devices, int) and devices > 1 and world().size == 1 else 1


def problems(cfg: DictConfig) -> list[str]:
    """What cannot run with `trainer.strategy` in this process's environment, or in the
    `trainer.devices` processes optbench would start (empty: all can)."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy not in STRATEGIES:
        return []  # the trainer schema reports it
    here = world()
    starting = devices_to_start(cfg)
    size, source = (starting, "trainer.devices") if starting > 1 else (here.size, "torchrun's WORLD_SIZE")
    missing = [name for name in TORCHRUN_VARS if name not in os.environ]
    if strategy in ("ddp", "fsdp") and missing and starting == 1:
        return [f"trainer.strategy={strategy}: needs several processes: set trainer.devices=N (optbench starts "
                f"them), or run `torchrun --nproc_per_node=N -m optbench run ...` ({', '.join(missing)} not set); "
                f"or use trainer.strategy=none (or auto) for one process."]
    found = []
    if strategy == "none" and size > 1:
        found.append(f"trainer.strategy=none: {size} processes ({source}) would each train alone into the "
                     f"same folder; use trainer.strategy=auto, ddp or fsdp.")
    resolved = resolve_strategy(strategy, size)
    batch = cfg.data.get("batch_size")
    if resolved != "none" and isinstance(batch, int) and batch % size:
        below = batch - batch % size
        near = " or ".join(str(b) for b in (below, below + size) if b > 0)
        found.append(f"data.batch_size={batch}: not divisible by the world size {size} ({source}); "
                     f"data.batch_size is the global batch and each process reads an equal "
                     f"share. Choose a multiple of {size}, such as {near}.")
    if resolved == "none":
        return found
    if cfg.get("gan") is not None:
        found.append(f"trainer.strategy={resolved}: GAN training runs in one process only; "
                     f"start it without torchrun.")
    if _needs_hessian(cfg.optimizer):
        found.append(f"optimizer._target_={cfg.optimizer._target_}: its Hessian estimate comes from one "
                     f"process's batch and would differ between ranks; run it in one process.")
    if resolved == "fsdp" and cfg.trainer.get("ema", {}).get("decay") is not None:
        found.append("trainer.ema.decay: the weight EMA is not available with trainer.strategy=fsdp "
                     "(it would copy the sharded model); use trainer.strategy=ddp or set trainer.ema.decay=null.")
    return found


def _needs_hessian(node: DictConfig) -> bool:
    """Whether the optimizer, or one that it wraps, refreshes a Hessian estimate from the model (SophiaG)."""
    from optbench.build import estimates_hessian, nested_components

    return any(estimates_hessian(n) for _, n in [("optimizer", node), *nested_components(node, "optimizer")])


def launch(devices: int, args: list[str]) -> int:
    """`optbench run ARGS` in `devices` processes on this machine, started by torchrun (standalone:
    a free port of its own); torchrun's exit status. Stop signals sent to this process reach the
    run: torchrun passes them on to every rank, which checkpoint and stop."""
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
               "-m", "optbench", "run", *args]
    process = subprocess.Popen(command)

    def forward(signum: int, _frame: Any) -> None:
        process.send_signal(signum)

    # Ctrl-C reaches the whole process group already: this process only waits for the others.
    handlers = {signal.SIGTERM: forward, signal.SIGUSR1: forward, signal.SIGUSR2: forward,
                signal.SIGINT: lambda *_: None}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def init_process_group() -> None:
    """Join the processes torchrun started (once): gloo for CPU tensors, NCCL for CUDA tensors."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        # Pin this process's GPU before NCCL creates its communicators on it.
        torch.cuda.set_device(world().local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    atexit.register(dist.destroy_process_group)  # leave the group cleanly when the process ends


def shared_output_overrides(cfg: DictConfig) -> list[str]:
    """Overrides that give every rank rank 0's run (and sweep) folder, and leave the folder's files
    (Hydra's .hydra/ and its log file) to rank 0. Empty for one process.

    The default folder names hold the time, which each process reads for itself: rank 0 decides
    and the others are told, before Hydra creates anything.
    """
    here = world()
    if here.size == 1:
        return []
    import torch.distributed as dist

    init_process_group()
    folders = [[str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)]]
    dist.broadcast_object_list(folders, src=0)
    run_dir, sweep_dir = folders[0]
    overrides = [f"hydra.run.dir={quoted(run_dir)}", f"hydra.sweep.dir={quoted(sweep_dir)}"]
    return overrides + ([] if here.is_main else QUIET_RANK)


def quoted(path: str) -> str:
    """A path as a quoted Hydra override value (commas, spaces and `=` are safe inside quotes)."""
    return "'" + path.replace("'", "\\'") + "'"


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`values` reduced element-wise over all ranks by `op` (sum, min or max), in place;
    unchanged in one process."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(values, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
                                    "max": dist.ReduceOp.MAX}[op])
    return values


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank: a decision that every rank must take together."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)])  # a CPU tensor: gloo, off the GPU's stream
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (`[obj]` in one process)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def wrap(model: torch.nn.Module, strategy: str, device: torch.device) -> torch.nn.Module:
    """The module that training calls: `model` itself, DDP around it, or `model` sharded in place
    by FSDP2 (each child module that holds parameters is a unit, then the root).

    DDP keeps `model` as it is (its state_dict, optimizer and EMA read it directly) and averages
    the gradients across ranks during backward, so that clipping, LAMB's and LARS's trust ratios
    and every optimizer see the global batch's gradient.
    """
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for child in model.children():
            if any(True for _ in child.parameters()):
                fully_shard(child)
        fully_shard(model)
    return model


@contextmanager
def no_gradient_sync(module: torch.nn.Module, strategy: str) -> Iterator[None]:
    """Backward passes inside accumulate gradients locally, without communication: for the
    micro-batches that do not step (the stepping one synchronises the sum)."""
    if strategy == "ddp":
        with module.no_sync():  # type: ignore[operator]
            yield
    elif strategy == "fsdp":
        module.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)  # type: ignore[operator]
    else:
        yield


# Under FSDP2 each rank writes its own shards of the model's and optimizer's state through
# torch.distributed.checkpoint (DCP) into a folder beside last.pt, which names it; the folder is new
# for every checkpoint, so the one that last.pt (or previous.pt) names is never written over, and
# DCP reshards on loading, so a checkpoint loads at another world size too. best.pt, which only
# evaluation reads, holds the whole model, gathered to the CPU.

SHARDED = "sharded-"  # name prefix of the sharded checkpoint folders


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path, step: int) -> str:
    """Write this rank's shards into a new folder of `folder` (every rank calls it); its name."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = [f"{SHARDED}{step:08d}-0"]
    if dist.get_rank() == 0:  # rank 0 picks a name no folder has, the others are told
        number = 0
        while (folder / name[0]).exists():
            number += 1
            name[0] = f"{SHARDED}{step:08d}-{number}"
    dist.broadcast_object_list(name, src=0)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder / name[0])
    return name[0]


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load this rank's shards from the folder `save_sharded` wrote (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def remove_unreferenced(folder: Path, keep: set[str]) -> None:
    """Delete the sharded checkpoint folders in `folder` that neither last.pt nor previous.pt names."""
    for path in folder.glob(f"{SHARDED}*"):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def whole_model_state(model: torch.nn.Module, strategy: str) -> dict[str, Any]:
    """The model's state dict, whole (every rank must call it under FSDP2)."""
    if strategy != "fsdp":
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
