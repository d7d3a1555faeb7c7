"""LARS: SGD with momentum whose step is scaled per layer by a trust ratio.

Paper: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888
(Algorithm 1). Checked against timm.optim.Lars, with always_adapt both ways, in
tests/test_optim_parity.py (float64, 60 steps).

Which tensors get the trust ratio: Algorithm 1 gives every layer its local LR, but the LARS that
large-batch practice uses adapts only the tensors with weight decay. BYOL (Grill et al. 2020,
arXiv:2006.07733, Sec. 3.3) "exclud[es] the biases and batch normalization parameters from both LARS
adaptation and weight decay"; SimCLR's LARS (Chen et al. 2020, arXiv:2002.05709; its
lars_optimizer.py) excludes from adaptation what it excludes from decay; timm's Lars does the same
unless `always_adapt`. optbench follows them by default: its `params=no_decay` groups are exactly
those biases and norms, and an adapted step is at most γη‖w‖ long (before momentum) whatever the
gradient, so a tensor of small norm barely moves (Rosenbrock from (1.5, 1.5), cyclic coordinate
gradients, γ = 1e-3, no momentum: after 2,000 steps no closer to the minimum than it started, and
0.44 from it unadapted; tests/test_optim_parity.py).
`always_adapt=True` is Algorithm 1 as written.
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
from optbench.schema import Fraction, NonNegativeFloat, PositiveFloat


def _local_lr(param_norm: Tensor, grad_norm: Tensor, *,
              weight_decay: float, trust_coefficient: float, eps: float) -> Tensor:
    """λ = η ‖w‖ / (‖∇L(w)‖ + β‖w‖): the paper's local LR (‖g‖ + β‖w‖ bounds ‖g + βw‖)."""
    return trust_ratio(param_norm, grad_norm + weight_decay * param_norm + eps, trust_coefficient)


def _lars(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor],
          param_norms: list[Tensor], grad_norms: list[Tensor], *,
          lr: float, momentum: float, weight_decay: float, trust_coefficient: float, eps: float) -> None:
    for p, g, buf, w_norm, g_norm in zip(params, grads, momentum_buffers, param_norms, grad_norms):
        local_lr = _local_lr(w_norm, g_norm, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps)
        buf.mul_(momentum).add_(local_lr * (g + weight_decay * p))  # v ← m v + λ (∇L(w) + βw)
        p.sub_(lr * buf)  # w ← w − γ v


_kernel = StepKernel(_lars)


def _sgd_momentum(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], *,
                  lr: float, momentum: float) -> None:
    """The step of a group that LARS leaves unadapted (it has no decay): SGD with momentum."""
    torch._foreach_mul_(momentum_buffers, momentum)
    torch._foreach_add_(momentum_buffers, grads)  # v ← m v + ∇L(w)
    torch._foreach_add_(params, momentum_buffers, alpha=-lr)  # w ← w − γ v


def _adapts(group: dict[str, Any]) -> bool:
    """Whether LARS scales this group's steps by the trust ratio: where it has weight decay, or always
    with `always_adapt` (see the module's docstring)."""
    return group["always_adapt"] or group["weight_decay"] != 0


class Lars(TrustRatioOptimizer):
    """LARS (You et al. 2017): the global LR `lr` times a per-tensor trust ratio, with momentum.

    `trust_coefficient` is the paper's η; weight decay is the paper's L2 term β, inside the ratio.
    A group without weight decay takes plain SGD steps with momentum (trust ratio 1) unless
    `always_adapt`, as in SimCLR, BYOL and timm; `always_adapt=True` adapts every tensor (Algorithm 1).
    State: `momentum_buffer` (4 bytes per parameter).
    `fused`: on the CPU, run optbench's C kernel (`optbench.optim.native`); elsewhere, or where it
    cannot be built, the update compiled by torch.compile. None: each where it works here.
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 1.0, momentum: Fraction = 0.9,
                 weight_decay: NonNegativeFloat = 0.0, trust_coefficient: PositiveFloat = 0.001,
                 eps: NonNegativeFloat = 1e-8, always_adapt: bool = False, *, fused: bool | None = None):
        check_hyperparameters(lr, eps=eps, weight_decay=weight_decay, momentum=momentum)
        if not trust_coefficient > 0:
            raise ValueError(f"Invalid trust_coefficient value: {trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps, always_adapt=always_adapt, fused=fused)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("always_adapt", True)  # saved before the option: every tensor was adapted

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        kept_ratios = self.trust_ratios_to_keep()
        for group, params, grads in self.groups_to_step():
            # A zero buffer makes the first step v = λ(g + βw), as torch's SGD starts it.
            (buffers,) = self.zero_states(params, "momentum_buffer")
            if not _adapts(group):
                if kept_ratios is not None:
                    kept_ratios.update((p, torch.ones((), dtype=p.dtype, device=p.device)) for p in params)
                _sgd_momentum(params, grads, buffers, lr=group["lr"], momentum=group["momentum"])
                continue
            hyper = dict(lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                         trust_coefficient=group["trust_coefficient"], eps=group["eps"])
            if kept_ratios is not None:  # the ratios this step is about to use (the C kernel keeps its own)
                ratios = _local_lr(torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(grads)),
                                   weight_decay=group["weight_decay"], trust_coefficient=group["trust_coefficient"],
                                   eps=group["eps"])
                kept_ratios.update(zip(params, ratios.unbind()))
            if packed := self.pack(group, [params, grads, buffers]):
                native.step("lars_step", packed, **hyper)
                continue
            # Norms outside the kernel: ATen's multi-threaded reductions beat compiled ones on CPU.
            _kernel(group["fused"], params, grads, buffers,
                    list(torch._foreach_norm(params)), list(torch._foreach_norm(grads)), **hyper)
        return loss
