"""Pieces that optbench's optimizers share: argument checks, the trust ratio, the fused path.

Each optimizer writes its update once, as a plain per-tensor function that reads like the paper
(`for p, g, m in zip(...)`). `StepKernel` runs that function as it is, or compiled by
`torch.compile`, which fuses each tensor's element-wise ops into one pass over memory: the same
maths, a fraction of the memory traffic. Where no compiler works the plain path runs instead.
On the CPU, LAMB, LARS, Lion and SophiaG step with optbench's C kernels (`optbench.optim.native`) before
either, tested against the same plain functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import torch
from torch import Tensor

from optbench.optim import native

log = logging.getLogger("optbench")


def check_hyperparameters(
    lr: float,
    betas: Sequence[float] | None = None,
    eps: float | None = None,
    weight_decay: float | None = None,
    momentum: float | None = None,
) -> None:
    """Raise ValueError (torch's wording) for a value outside its range; None skips a check."""
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if eps is not None and not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if weight_decay is not None and not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if betas is not None:
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas} (two coefficients expected)")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def trust_ratio(param_norm: Tensor, update_norm: Tensor, coefficient: float = 1.0) -> Tensor:
    """The layer-wise scale `coefficient * ||w|| / ||u||` of LARS and LAMB.

    It is 1 where either norm is zero: a layer initialised at zero (a bias) or with nothing to
    update would otherwise never move, or divide by zero.
    """
    ratio = coefficient * param_norm / update_norm
    return torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))


def compiled(target: Callable[..., Any], what: str, **options: Any) -> Callable[..., Any]:
    """`torch.compile(target, **options)`, and a log line saying so: its first call waits for the
    compiler (seconds to tens of seconds), which a user would otherwise take for a hung run.

    Inductor's on-disk caches (the FX graph cache, under TORCHINDUCTOR_CACHE_DIR) are left on, as
    torch sets them: a later run of the same kernel loads it instead of compiling it again.
    """
    say_compiling(what)
    return torch.compile(target, **options)


def say_compiling(what: str) -> None:
    """The log line of `compiled`, for what is compiled another way (in place: `Module.compile()`)."""
    log.info("%s: torch.compile compiles it at its first call, and the run waits for that (seconds; "
             "less once torch's on-disk cache holds it, see TORCHINDUCTOR_CACHE_DIR)", what)


class StepKernel:
    """An optimizer's per-tensor update, run plain or compiled.

    `fused`: False runs the plain function; True compiles it (errors propagate); None compiles
    it when a compiler works here and falls back to the plain function, once and for all, when
    compiling fails (no C++ compiler, an unsupported device).

    The compiled function gets its float hyperparameters as 0-dim float64 tensors, so a
    scheduler changing the LR each step does not recompile it; kernels therefore write them
    in arithmetic (`p.sub_(lr * u)`), never as `alpha=`.
    """

    def __init__(self, plain: Callable[..., Any]):
        self.plain = plain
        self._compiled: Callable[..., Any] | None = None
        self._compile_failed = False

    def __call__(self, fused: bool | None, *args: Any, **kwargs: Any) -> Any:
        if fused is False or (fused is None and self._compile_failed):
            return self.plain(*args, **kwargs)
        if self._compiled is None:
            self._compiled = compiled(self.plain, f"the update {self.plain.__name__}", fullgraph=True)
        args, kwargs = _floats_as_tensors(args, kwargs, args[0][0].device)
        if fused:
            return self._compiled(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as e:  # compilation fails before any tensor is written: rerun plain
            self._compile_failed = True
            log.warning("%s: torch.compile failed (%s); using the plain path", self.plain.__name__,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            return self.plain(*args, **kwargs)


def _floats_as_tensors(args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device
                       ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """`args` and `kwargs` with every float, and every list of floats, as 0-dim float64 tensors on
    `device`, all moved there in one copy. On CUDA the copy leaves from pinned memory and the host
    goes on: a tensor made from a Python float on the device (`torch.tensor(x, device=...)`) waits
    for the device's queue to drain, and LAMB's per-tensor bias corrections would be hundreds of such
    waits a step."""
    numbers: list[float] = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, float):
            numbers.append(value)
        elif _float_list(value):
            numbers.extend(value)
    if not numbers:
        return args, kwargs
    host = torch.tensor(numbers, dtype=torch.float64, pin_memory=device.type == "cuda")
    scalars = iter(host.to(device, non_blocking=True).unbind())

    def swapped(value: Any) -> Any:
        if isinstance(value, float):
            return next(scalars)
        return [next(scalars) for _ in value] if _float_list(value) else value

    return tuple(swapped(a) for a in args), {k: swapped(v) for k, v in kwargs.items()}


def _float_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], float)


def evaluate_closure(closure: Callable[[], Any] | None) -> Any:
    """The loss that an optimizer's `step(closure)` returns: the closure re-run with grad enabled."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class FusableOptimizer(torch.optim.Optimizer):
    """An optimizer whose groups carry `fused`: False runs the plain path; True or None a fast one
    (a C kernel or the compiled update), None only where it works here."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("fused", None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.pop("_packed", None)  # it holds the state tensors that are about to be replaced
        super().load_state_dict(state_dict)

    def zero_state(self, p: Tensor, *names: str) -> dict[str, Tensor]:
        """The state of parameter `p`, with the tensors `names` created as zeros on its first step."""
        state = self.state[p]
        if len(state) == 0:
            for name in names:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def zero_states(self, params: list[Tensor], *names: str) -> list[list[Tensor]]:
        """For each of `names`, that state tensor of each of `params` (`zero_state`'s), in loops that
        run in C (map): with thousands of small tensors, per-tensor Python is most of a step."""
        states = list(map(self.state.__getitem__, params))  # a defaultdict: a new parameter's is {}
        if not all(states):
            states = [self.zero_state(p, *names) for p in params]
        return [list(map(itemgetter(name), states)) for name in names]

    def groups_to_step(self) -> Iterator[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
        """Each parameter group with its parameters that have a gradient this step, and their
        gradients; groups without any are left out."""
        for group in self.param_groups:
            grads = list(map(_GRAD, group["params"]))
            params = group["params"]
            if not all(g is not None for g in grads):
                params = [p for p, g in zip(params, grads) if g is not None]
                grads = [g for g in grads if g is not None]
            if any(map(_IS_SPARSE, grads)):
                raise RuntimeError("optbench's optimizers do not support sparse gradients")
            if params:
                yield group, params, grads

    def pack(self, group: dict[str, Any], tensor_lists: list[list[Tensor]]) -> native.Packed | None:
        """`native.usable` for a group's tensors, told what they were at the group's last step: the
        parameters and the state, the same tensors step after step, are not checked again."""
        known = self.__dict__.setdefault("_packed", {})  # an attribute, not state: never saved or copied
        packed = native.usable(group["fused"], tensor_lists, known.get(id(group)))
        if packed is None:
            known.pop(id(group), None)
        else:
            known[id(group)] = packed.without_gradients()
        return packed


_GRAD, _IS_SPARSE = attrgetter("grad"), attrgetter("is_sparse")


class TrustRatioOptimizer(FusableOptimizer):
    """A FusableOptimizer that scales each tensor's step by a trust ratio (LAMB, LARS) and reports
    the ratios of a step asked for beforehand (`optbench.optim.wrapping.ReportsTrustRatios`).

    Only on request: the C kernels keep their ratios to themselves, so reporting them costs a
    step some work, and reading them costs a device-to-host copy.
    """

    def request_trust_ratios(self) -> None:
        # Cleared here, not when read: a step that never comes (skipped on overflow) reports nothing.
        self._trust_ratios: dict[Tensor, Tensor] = {}
        self._trust_ratios_requested = True

    def trust_ratios(self) -> dict[Tensor, Tensor]:
        return getattr(self, "_trust_ratios", {})  # absent after unpickling

    def trust_ratios_to_keep(self) -> dict[Tensor, Tensor] | None:
        """For `step()` to call first: where to put its ratios if they were requested, else None."""
        if not getattr(self, "_trust_ratios_requested", False):
            return None
        self._trust_ratios_requested = False
        return self._trust_ratios


class WrapsOptimizers(torch.optim.Optimizer):
    """An optimizer that steps others (`optbench.optim.wrapping.Wrapper`), kept in `inner`.

    torch's `Optimizer.__getstate__` keeps only `defaults`, `state` and `param_groups`, so a
    deepcopy or an unpickled copy would lose the optimizers inside and fail at its first step.
    Kept here, they come back within the same copy as this optimizer, sharing its groups and state.
    """

    inner: Any

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "inner": self.inner}
