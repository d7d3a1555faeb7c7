"""Muon on the hidden weight matrices, AdamW on everything else, as Muon's authors use it.

Muon: K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024), and
Liu et al., "Muon is Scalable for LLM Training", arXiv:2502.16982. The update itself is
torch.optim.Muon; this module only splits the parameters the way the authors' README says:
"The input embedding, final output layer, and any internal gains or biases should be optimized
using a standard method such as AdamW."
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from optbench.optim.base import WrapsOptimizers, evaluate_closure
from optbench.schema import Fraction, NonNegativeFloat, PositiveInt


def split_hidden_matrices(groups: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Muon groups, AdamW groups): 2-D weights other than the first (input) and last (output) one.

    Each group keeps its own settings; a group's `name` gets `.muon` / `.adamw` appended. torch's
    Muon takes 2-D tensors only, so convolution filters go to AdamW too.
    """
    matrices = [p for g in groups for p in g["params"] if p.ndim == 2]
    edges = {id(matrices[0]), id(matrices[-1])} if matrices else set()

    def hidden(p: Tensor) -> bool:
        return p.ndim == 2 and id(p) not in edges

    muon, adamw = [], []
    for group in groups:
        for kind, keep, out in (("muon", True, muon), ("adamw", False, adamw)):
            params = [p for p in group["params"] if hidden(p) == keep]
            if params:
                named = {"name": f"{group['name']}.{kind}"} if "name" in group else {}
                out.append({**group, **named, "params": params})
    return muon, adamw


class StateView(Mapping[Tensor, dict[str, Any]]):
    """The states of several optimizers as one mapping, each parameter's in the optimizer that steps it.

    Reading a parameter's state creates it (empty) in that optimizer only, as torch's own state
    does; iterating creates nothing. (A ChainMap over their defaultdicts inserted every parameter
    it read into the first one, whose state_dict() then failed on parameters it does not have.)
    """

    def __init__(self, optimizers: list[Optimizer]):
        self._optimizers = optimizers
        self._owner = {p: opt for opt in optimizers for group in opt.param_groups for p in group["params"]}

    def __getitem__(self, param: Tensor) -> dict[str, Any]:
        return self._owner[param].state[param]  # the owner's state is read anew: loading replaces it

    def __contains__(self, param: object) -> bool:
        return any(param in opt.state for opt in self._optimizers)

    def __iter__(self) -> Iterator[Tensor]:
        return (p for opt in self._optimizers for p in opt.state)

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._optimizers)


class MuonWithAdamW(WrapsOptimizers):
    """torch.optim.Muon (`lr`, `momentum`, ...) on hidden matrices; torch.optim.AdamW (`adamw_*`) on the rest.

    Both inner optimizers' parameter groups are this optimizer's groups (so one scheduler scales
    both LRs), its state is theirs together, and its `state_dict()` holds both.
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 0.02, momentum: Fraction = 0.95,
                 nesterov: bool = True, ns_steps: PositiveInt = 5, weight_decay: NonNegativeFloat = 0.01,
                 adamw_lr: NonNegativeFloat = 3e-4, adamw_betas: tuple[Fraction, Fraction] = (0.9, 0.95),
                 adamw_eps: NonNegativeFloat = 1e-8, adamw_weight_decay: NonNegativeFloat = 0.0):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        muon_groups, adamw_groups = split_hidden_matrices(groups)
        for group in adamw_groups:
            if "lr" in group:  # a group's own LR is Muon's; its AdamW part keeps the ratio adamw_lr / lr
                group["lr"] = adamw_lr * group["lr"] / lr if lr else adamw_lr
        self.inner: dict[str, Optimizer] = {}
        if muon_groups:
            self.inner["muon"] = torch.optim.Muon(muon_groups, lr=lr, momentum=momentum, nesterov=nesterov,
                                                  ns_steps=ns_steps, weight_decay=weight_decay)
        if adamw_groups:
            self.inner["adamw"] = torch.optim.AdamW(adamw_groups, lr=adamw_lr, betas=tuple(adamw_betas),
                                                    eps=adamw_eps, weight_decay=adamw_weight_decay)
        super().__init__([g for opt in self.inner.values() for g in opt.param_groups], {})
        self._share_inner()

    def _share_inner(self) -> None:
        self.param_groups = [g for opt in self.inner.values() for g in opt.param_groups]
        self.state = StateView(self.wrapped_optimizers())  # type: ignore[assignment]

    def wrapped_optimizers(self) -> list[Optimizer]:
        return list(self.inner.values())

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        for opt in self.inner.values():
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {kind: opt.state_dict() for kind, opt in self.inner.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for kind, opt in self.inner.items():
            opt.load_state_dict(state_dict[kind])
        self._share_inner()
