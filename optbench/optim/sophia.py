"""SophiaG: clipped second-order steps with a Gauss-Newton-Bartlett estimate of the Hessian diagonal.

Paper: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training", arXiv:2305.14342 (Algorithms 2 and 3). Checked against the authors' published update
rule (github.com/Liuhong99/Sophia, sophia.py, SophiaG), transcribed independently in
tests/test_optim_parity.py (float64, 60 steps, Hessian refreshed every 10).

The authors keep the EMA of ĝ⊙ĝ and multiply by the batch size B at every step (`rho * bs * hess`);
here the estimator is the paper's B·ĝ⊙ĝ, so the step needs no batch size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from optbench.optim import native
from optbench.optim.base import (
    FusableOptimizer,
    StepKernel,
    check_hyperparameters,
    evaluate_closure,
)
from optbench.schema import Fraction, NonNegativeFloat, PositiveInt


def _sophia(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], hessians: list[Tensor], *,
            lr: float, beta1: float, rho: float, weight_decay: float, eps: float) -> None:
    for p, g, m, h in zip(params, grads, exp_avgs, hessians):
        p.mul_(1 - lr * weight_decay)  # decoupled weight decay
        m.mul_(beta1).add_(g * (1 - beta1))  # m_t
        # θ ← θ − η · clip(m / max(ρ·h, ε), 1), written as sign(m) · min(|m| / (ρ·h + ε), 1)
        p.sub_(lr * m.sign() * (m.abs() / (rho * h + eps)).clamp(max=1))


_kernel = StepKernel(_sophia)


class SophiaG(FusableOptimizer):
    """SophiaG (Liu et al. 2023). Call `update_hessian(model, inputs)` every `hessian_interval` steps.

    `wants_hessian(step)` says when: optbench's trainer asks after each step, through
    `optbench.optim.wrapping.refresh_hessian`, which finds it inside a wrapper too. Until the first
    refresh the Hessian estimate is zero and every coordinate takes a clipped (sign) step.
    State: `exp_avg`, `hessian` (8 bytes per parameter).
    `fused`: on the CPU, run optbench's C kernel (`optbench.optim.native`); elsewhere, or where it
    cannot be built, the update compiled by torch.compile. None: each where it works here.
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 2e-4,
                 betas: tuple[Fraction, Fraction] = (0.965, 0.99), rho: NonNegativeFloat = 0.04,
                 weight_decay: NonNegativeFloat = 0.1, eps: NonNegativeFloat = 1e-15,
                 hessian_interval: PositiveInt = 10, *, fused: bool | None = None):
        check_hyperparameters(lr, betas=betas, eps=eps, weight_decay=weight_decay)
        if not rho >= 0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not hessian_interval >= 1:
            raise ValueError(f"Invalid hessian_interval value: {hessian_interval}")
        # hessian_interval is the optimizer's, not a group's (one refresh covers every group), but it is
        # kept in `defaults`: torch's __getstate__ drops plain attributes from a deepcopy or a pickle.
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, eps=eps,
                        hessian_interval=hessian_interval, fused=fused)
        super().__init__(params, defaults)

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        return self.zero_state(p, "exp_avg", "hessian")

    def wants_hessian(self, step: int) -> bool:
        """Whether the Hessian estimate is due after optimizer step number `step` (counted from 1)."""
        return step % self.defaults["hessian_interval"] == 0

    @torch.no_grad()
    def update_hessian(self, model: nn.Module, inputs: Tensor) -> None:
        """Fold one Gauss-Newton-Bartlett estimate into the Hessian EMA (Algorithm 2).

        Labels are sampled from the model's own output distribution; the gradient ĝ of the mean
        loss on them gives the estimate B·ĝ⊙ĝ, B the number of predictions (rows of logits).
        The parameters' `.grad` is left untouched.
        """
        betas2 = [(p, group["betas"][1]) for group in self.param_groups for p in group["params"] if p.requires_grad]
        params = [p for p, _ in betas2]
        with torch.enable_grad():
            logits = model(inputs)
            logits = logits.reshape(-1, logits.shape[-1])
            sampled = torch.distributions.Categorical(logits=logits.detach()).sample()
            loss = F.cross_entropy(logits, sampled)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        batch = logits.shape[0]
        for (p, beta2), g in zip(betas2, grads):
            if g is not None:  # a parameter that the output does not depend on has no estimate
                self._state(p)["hessian"].mul_(beta2).addcmul_(g, g, value=(1 - beta2) * batch)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        for group, params, grads in self.groups_to_step():
            tensors = [params, grads, *self.zero_states(params, "exp_avg", "hessian")]
            hyper = dict(lr=group["lr"], beta1=group["betas"][0], rho=group["rho"],
                         weight_decay=group["weight_decay"], eps=group["eps"])
            if packed := self.pack(group, tensors):
                native.step("sophia_step", packed, **hyper)
            else:
                _kernel(group["fused"], *tensors, **hyper)
        return loss
