"""Lion: evolved sign momentum.

Paper: Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675 (Algorithm 2,
with decoupled weight decay). Checked against lion-pytorch (lucidrains) and timm.optim.Lion in
tests/test_optim_parity.py (float64, 60 steps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optbench.optim import native
from optbench.optim.base import (
    FusableOptimizer,
    StepKernel,
    check_hyperparameters,
    evaluate_closure,
)
from optbench.schema import Fraction, NonNegativeFloat


def _lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *,
          lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    for p, g, m in zip(params, grads, exp_avgs):
        c = m * beta1 + g * (1 - beta1)  # c_t: the interpolation whose sign is the update
        p.mul_(1 - lr * weight_decay).sub_(lr * c.sign())  # θ ← θ − η(sign(c_t) + λθ)
        m.mul_(beta2).add_(g * (1 - beta2))  # m_t tracks the gradient with the slower β2


_kernel = StepKernel(_lion)


class Lion(FusableOptimizer):
    """Lion (Chen et al. 2023). Use an LR 3-10x smaller and a weight decay 3-10x larger than AdamW's.

    State: `exp_avg` only (4 bytes per parameter in float32), half of Adam's.
    `fused`: on the CPU, run optbench's C kernel (`optbench.optim.native`); elsewhere, or where it
    cannot be built, the update compiled by torch.compile. None: each where it works here.
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 1e-4,
                 betas: tuple[Fraction, Fraction] = (0.9, 0.99),
                 weight_decay: NonNegativeFloat = 0.0, *, fused: bool | None = None):
        check_hyperparameters(lr, betas=betas, weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        for group, params, grads in self.groups_to_step():
            beta1, beta2 = group["betas"]
            (exp_avgs,) = self.zero_states(params, "exp_avg")
            hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
            if packed := self.pack(group, [params, grads, exp_avgs]):
                native.step("lion_step", packed, **hyper)
            else:
                _kernel(group["fused"], params, grads, exp_avgs, **hyper)
        return loss
