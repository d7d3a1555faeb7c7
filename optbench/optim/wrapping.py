"""What the trainer and the diagnostics ask of an optimizer, answered through any wrapper.

An optimizer that wraps others (Lookahead, MuonWithAdamW) says so with `wrapped_optimizers()`;
the functions here reach every optimizer inside, at any depth, so that a SophiaG inside a
Lookahead still gets its Hessian refreshed and a LAMB inside one still reports its trust ratios.
The leaves answer through two small protocols: `EstimatesHessian` (SophiaG) and
`ReportsTrustRatios` (LAMB, LARS).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer


@runtime_checkable
class Wrapper(Protocol):
    def wrapped_optimizers(self) -> list[Optimizer]:
        """The optimizers that this one steps, in the order it steps them."""


@runtime_checkable
class EstimatesHessian(Protocol):
    def wants_hessian(self, step: int) -> bool:
        """Whether a Hessian refresh is due after optimizer step number `step` (counted from 1)."""

    def update_hessian(self, model: nn.Module, inputs: Tensor) -> None:
        """Refresh the Hessian estimate from the model's output on `inputs`."""


@runtime_checkable
class ReportsTrustRatios(Protocol):
    def request_trust_ratios(self) -> None:
        """Have the next step keep the trust ratios it uses (computing them costs an extra pass)."""

    def trust_ratios(self) -> dict[Tensor, Tensor]:
        """Each parameter's trust ratio (a 0-dim tensor) in the step after the last request."""


def leaves(optimizer: Optimizer) -> list[Optimizer]:
    """Every optimizer inside `optimizer` that wraps no other: `[optimizer]` if it wraps none."""
    return [opt for opt in _with_inner(optimizer) if not isinstance(opt, Wrapper)]


def hessian_estimators(optimizer: Optimizer) -> list[EstimatesHessian]:
    """The optimizers inside `optimizer` (or itself) that keep a Hessian estimate."""
    return [leaf for leaf in leaves(optimizer) if isinstance(leaf, EstimatesHessian)]


def refresh_hessian(optimizer: Optimizer, step: int, model: nn.Module, inputs: Tensor) -> None:
    """After optimizer step number `step`: refresh the Hessian of every leaf whose refresh is due."""
    for leaf in hessian_estimators(optimizer):
        if leaf.wants_hessian(step):
            leaf.update_hessian(model, inputs)


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes of the tensors in the state of `optimizer` and of every optimizer inside it.

    Wrappers share their inner optimizers' state (or a view of it), so tensors are counted once
    each. Only existing entries are read: no parameter's state is created.
    """
    tensors = {id(t): t for opt in _with_inner(optimizer) for state in opt.state.values()
               for t in state.values() if isinstance(t, Tensor)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def request_trust_ratios(optimizer: Optimizer) -> None:
    """Have the next step of every leaf that scales its steps by trust ratios keep them."""
    for leaf in leaves(optimizer):
        if isinstance(leaf, ReportsTrustRatios):
            leaf.request_trust_ratios()


def trust_ratios(optimizer: Optimizer) -> dict[Tensor, float]:
    """Each parameter's trust ratio in the step after `request_trust_ratios`, from every leaf that
    has them; one device-to-host copy per leaf."""
    found: dict[Tensor, float] = {}
    for leaf in leaves(optimizer):
        ratios = leaf.trust_ratios() if isinstance(leaf, ReportsTrustRatios) else {}
        if ratios:
            found.update(zip(ratios, torch.stack(list(ratios.values())).tolist()))
    return found


def _with_inner(optimizer: Optimizer) -> list[Optimizer]:
    """`optimizer` and every optimizer inside it, at any depth."""
    inner = optimizer.wrapped_optimizers() if isinstance(optimizer, Wrapper) else []
    return [optimizer, *(o for i in inner for o in _with_inner(i))]
