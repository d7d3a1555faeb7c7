"""LAMB: Adam's direction, scaled per layer by a trust ratio, for large-batch training.

Paper: You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
arXiv:1904.00962 (Algorithm 2, bias-corrected moments, phi = identity). Composed as in optax's
`lamb`: Adam scaling, then the decay term, then the trust ratio, then the learning rate.
Checked against timm.optim.Lamb (always_adapt=True, max_grad_norm=None) in
tests/test_optim_parity.py (float64, 60 steps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from optbench.optim import native
from optbench.optim.base import (
    StepKernel,
    TrustRatioOptimizer,
    check_hyperparameters,
    evaluate_closure,
    trust_ratio,
)
from optbench.schema import Fraction, NonNegativeFloat


def _adam_direction(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                    bias_corrections1: list[float], bias_corrections2: list[float], *,
                    beta1: float, beta2: float, eps: float, weight_decay: float) -> list[Tensor]:
    """Update the moments; return each tensor's u_t = r_t + λx_t, the step before the trust ratio."""
    updates = []
    for p, g, m, v, bc1, bc2 in zip(params, grads, exp_avgs, exp_avg_sqs, bias_corrections1, bias_corrections2):
        m.mul_(beta1).add_(g * (1 - beta1))  # m_t
        v.mul_(beta2).add_(g * g * (1 - beta2))  # v_t
        r = (m / bc1) / ((v / bc2).sqrt() + eps)  # r_t = m̂_t / (sqrt(v̂_t) + ε): Adam's direction
        updates.append(r + weight_decay * p)  # decay joins the update before the trust ratio sees it
    return updates


_kernel = StepKernel(_adam_direction)


class Lamb(TrustRatioOptimizer):
    """LAMB (You et al. 2019): AdamW whose step is rescaled to ‖x‖/‖update‖ for each tensor.

    The weight decay is decoupled from the moments (as in the paper) and included in the update
    whose norm the trust ratio uses. State: `step`, `exp_avg`, `exp_avg_sq` (8 bytes per parameter);
    the C kernel also keeps a buffer as large as the largest parameter.
    `fused`: on the CPU, run optbench's C kernel (`optbench.optim.native`); elsewhere, or where it
    cannot be built, the update compiled by torch.compile. None: each where it works here.
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 1e-3,
                 betas: tuple[Fraction, Fraction] = (0.9, 0.999), eps: NonNegativeFloat = 1e-6,
                 weight_decay: NonNegativeFloat = 0.01, *, fused: bool | None = None):
        check_hyperparameters(lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        kept_ratios = self.trust_ratios_to_keep()
        for group, params, grads in self.groups_to_step():
            beta1, beta2 = group["betas"]
            exp_avgs, exp_avg_sqs = self.zero_states(params, "exp_avg", "exp_avg_sq")
            steps = self._count_step(params)
            bias_corrections1, bias_corrections2 = [1 - beta1**t for t in steps], [1 - beta2**t for t in steps]
            hyper = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])
            in_c = self.pack(group, [params, grads, exp_avgs, exp_avg_sqs])
            if in_c and kept_ratios is None:
                native.step("lamb_step", in_c, bias_corrections1=bias_corrections1,
                            bias_corrections2=bias_corrections2, scratch=self._update_buffer(params),
                            lr=group["lr"], **hyper)
                continue
            # The C kernel keeps its trust ratios to itself: a step that must report them runs plain.
            updates = _kernel(False if in_c else group["fused"], params, grads, exp_avgs, exp_avg_sqs,
                              bias_corrections1, bias_corrections2, **hyper)
            # x ← x − η ‖x‖/‖u‖ · u; the norms outside the kernel (ATen's reductions are faster).
            ratios = trust_ratio(torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(updates)))
            torch._foreach_addcmul_(params, updates, list((-group["lr"] * ratios).unbind()))
            if kept_ratios is not None:
                kept_ratios.update(zip(params, ratios.unbind()))
        return loss

    def _count_step(self, params: list[Tensor]) -> list[float]:
        """Each parameter's step number, counted up by one. Kept as a tensor in each parameter's state,
        as torch's Adam keeps it; counted in one call for all and read in one copy (a `+= 1` and an
        `.item()` per tensor took most of a step over thousands of small tensors)."""
        states = list(map(self.state.__getitem__, params))
        for state in states:
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
        counters = [state["step"] for state in states]
        torch._foreach_add_(counters, 1.0)
        return torch.stack(counters).tolist()

    def _update_buffer(self, params: list[Tensor]) -> Tensor:
        """Room for one tensor's update u in the C kernel, kept between steps (not state): a fresh
        buffer each step costs page faults, 1.4x fused AdamW's step instead of 1.2x."""
        size, dtype = max(p.numel() for p in params), params[0].dtype
        buffer = getattr(self, "_buffer", None)  # absent after unpickling
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            buffer = self._buffer = torch.empty(size, dtype=dtype)
        return buffer
