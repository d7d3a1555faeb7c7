"""Lookahead: k steps forward with any optimizer, then one step back towards slow weights.

Paper: Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back",
arXiv:1907.08610 (Algorithm 1). Checked against timm.optim.Lookahead (its slow weights set to θ0
first, as in the paper) and pytorch_optimizer.Lookahead in tests/test_optim_parity.py (float64).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from optbench.optim.base import WrapsOptimizers
from optbench.schema import PositiveInt, UnitInterval


class Lookahead(WrapsOptimizers):
    """Wraps `inner`: every `k` steps, slow ← slow + α(fast − slow), then fast ← slow.

    The wrapper shares the inner optimizer's parameter groups (a scheduler's LR reaches it) and
    its state: each parameter's slow copy is `slow_param` beside the inner optimizer's own
    entries, so `state_dict()` is the inner one's and holds everything.
    """

    def __init__(self, inner: Optimizer, k: PositiveInt = 5, alpha: UnitInterval = 0.5):
        if not isinstance(inner, Optimizer):
            raise ValueError(f"Invalid inner optimizer: {inner!r} (a torch.optim.Optimizer is needed)")
        if not k >= 1:
            raise ValueError(f"Invalid k value: {k}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Invalid alpha value: {alpha}")
        self.inner = inner
        # add_param_group keeps the group dicts themselves; the lookahead keys join them, prefixed (as
        # timm's are): an inner option of the same name (RMSprop's and bitsandbytes' `alpha`) would
        # otherwise keep its value and stand in for the lookahead's.
        super().__init__(inner.param_groups, dict(lookahead_k=k, lookahead_alpha=alpha, lookahead_step=0))
        self.state = inner.state

    def wrapped_optimizers(self) -> list[Optimizer]:
        return [self.inner]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        # The slow weights start at θ0: copied before the inner optimizer's first step of each
        # parameter (kept after it, so that the inner one still sees an empty state to initialise).
        # A closure computes the gradients inside the inner step: then which parameters it steps is
        # known only afterwards, so each one not yet started is copied and kept if it got a gradient.
        fresh = [(p, p.clone()) for g in self.param_groups for p in g["params"]
                 if (p.grad is not None or closure is not None) and "slow_param" not in self.state[p]]
        loss = self.inner.step(closure)
        for p, slow in fresh:
            if p.grad is not None:
                self.state[p]["slow_param"] = slow
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self._step_back(group)
        return loss

    def _step_back(self, group: dict[str, Any]) -> None:
        pairs = [(p, self.state[p]["slow_param"]) for p in group["params"] if "slow_param" in self.state[p]]
        if not pairs:
            return
        fast, slow = [p for p, _ in pairs], [s for _, s in pairs]
        torch._foreach_lerp_(slow, fast, group["lookahead_alpha"])  # slow ← slow + α(fast − slow)
        torch._foreach_copy_(fast, slow)  # fast ← slow

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
        # Loading replaced the inner optimizer's groups and state: share the new ones again.
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        for group in self.param_groups:  # saved before the keys were prefixed: this Lookahead's k and α
            for key, value in self.defaults.items():
                group.setdefault(key, value)
