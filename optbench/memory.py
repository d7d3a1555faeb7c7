"""Peak training memory, recorded in summary.json as `peak_memory` (bytes and how it was measured).

On CUDA it is `torch.cuda.max_memory_allocated` over the run: every tensor the caching allocator
handed out, the data set on the device included. A CPU has no such counter, and the process's
resident size mixes in torch's own libraries and memory that the C allocator keeps after a free.
So on the CPU the first optimizer steps of the process are watched op by op (a TorchDispatchMode):
the bytes of every live tensor storage (parameters and buffers, gradients, optimizer state,
activations and temporaries; the in-memory data set is not counted), peak taken after each op.
Every step repeats the same allocations, so a few steps show the run's peak; watching costs
Python work per op, which is why only those steps are watched. `optimizer.step()` itself runs
unwatched (torch.compile, which optbench's optimizers use, does not trace under such a mode): the
state it creates is counted after it, the temporaries it frees before returning are not.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Optimizer steps watched on the CPU: the first creates the optimizer state, the second runs
# with it in place, as every later step does.
WATCHED_STEPS = 2

CPU_MEASURE = (f"peak bytes of live tensors (parameters, gradients, optimizer state, activations; not the "
               f"data set, nor the optimizer step's temporaries) over the first {WATCHED_STEPS} optimizer steps, "
               f"tracked op by op")
CUDA_MEASURE = "torch.cuda.max_memory_allocated over the run"


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of tensor storages alive, and their peak, counting every op's outputs.

    Storages that existed before (`tensors`) are counted from the start; each storage is counted
    once (views share it) and leaves the count when Python frees it.
    """

    def __init__(self, tensors: Iterable[torch.Tensor]):
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        for tensor in tensors:
            self._count(tensor)

    def _count(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
            return
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.sizes:
            return
        self.sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._count(value)
        return out


class PeakMemory:
    """The peak memory of a run's training steps on its device; `watch` goes around each step."""

    def __init__(self, device: torch.device, modules: list[torch.nn.Module],
                 optimizers: list[torch.optim.Optimizer], watch: bool = True):
        """`modules` and `optimizers`: what holds the tensors that live from step to step."""
        self.device = device
        self.modules = modules
        self.optimizers = optimizers
        self.to_watch = WATCHED_STEPS if watch and device.type == "cpu" else 0
        self.watched = 0
        self.peak = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def kept_tensors(self) -> list[torch.Tensor]:
        """Weights, buffers and optimizer state."""
        return [*(t for m in self.modules for t in (*m.parameters(), *m.buffers())),
                *(t for opt in self.optimizers for state in opt.state.values() for t in state.values()
                  if isinstance(t, torch.Tensor))]

    @property
    def watching(self) -> bool:
        """Whether the next step is to be watched: the loop enters `watch()` only then (a context
        entered at every step costs ~15 us)."""
        return self.watched < self.to_watch

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Context for one optimizer step while `watching` (on the CPU, the first WATCHED_STEPS)."""
        mode = LiveTensorBytes(self.kept_tensors())
        active = [False]

        def enter(*_: Any) -> None:
            mode.__enter__()
            active[0] = True

        def leave(*_: Any) -> None:
            if active[0]:
                mode.__exit__(None, None, None)
                active[0] = False

        def after_optimizer_step(*_: Any) -> None:
            enter()
            for tensor in self.kept_tensors():  # the state the step created
                mode._count(tensor)

        # optimizer.step() runs unwatched: torch.compile (optbench's fused optimizer kernels)
        # cannot trace under a dispatch mode. Its new state is counted after it, its temporaries not.
        handles = [h for opt in self.optimizers
                   for h in (opt.register_step_pre_hook(leave), opt.register_step_post_hook(after_optimizer_step))]
        enter()
        try:
            yield
        finally:
            leave()
            for handle in handles:
                handle.remove()
        self.watched += 1
        self.peak = max(self.peak, mode.peak)

    def result(self) -> dict[str, Any] | None:
        """`{"bytes": ..., "measure": ...}` for summary.json; None where nothing was measured."""
        if self.device.type == "cuda":
            return {"bytes": torch.cuda.max_memory_allocated(self.device), "measure": CUDA_MEASURE}
        if self.device.type == "cpu" and self.watched:
            return {"bytes": self.peak, "measure": CPU_MEASURE}
        return None
