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

Speed: on the CPU a LARS step is two passes over each tensor (the norms, then the update), where
SGD's is one; on large tensors, bound by memory traffic, that read of the weights and gradients is
most of what LARS costs beyond SGD. The C kernel sums ‖w‖² of the new weights as it writes them,
and the next step uses that sum instead of reading the weights again when the weight is the same
tensor object, at the same address, at the autograd version the step left it at: any in-place op
on it (`copy_`, `mul_` under no_grad, `load_state_dict`) makes the step sum it afresh. A write
through `.data` is invisible to that version, as to autograd: code that changes weights that way
between steps must call `forget_weight_norms()`. The sum is the same function over the same blocks
as a fresh one, so a kept ‖w‖ and a fresh one are equal to the last bit (and a resumed run equal to
an uninterrupted one); tests/test_optim_fused.py checks both.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
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

# Weights of at least this many elements keep their ‖w‖² from one C-kernel step to the next: below
# it, checking that the weight is unchanged costs about what reading it again does (it is in cache).
KEEP_NORM_MIN = 65536


@dataclass(slots=True)
class KeptNorms:
    """‖w‖² of a group's large weights after their last C-kernel step, and what says each is unchanged
    since: the tensor object, its address and its autograd version; and the thread count the sums were
    made with (their rounding depends on it)."""
    sizes: array  # the group's packing's (the same object while the packing is)
    indices: list[int]  # positions in it
    weights: list[Tensor]
    addresses: list[int]
    versions: list[int]
    squares: list[float]
    threads: int


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
                squares = self._known_weight_squares(group, packed)
                native.step("lars_step", packed, weight_squares=squares, **hyper)
                self._keep_weight_squares(group, packed, squares)
                continue
            # Norms outside the kernel: ATen's multi-threaded reductions beat compiled ones on CPU.
            _kernel(group["fused"], params, grads, buffers,
                    list(torch._foreach_norm(params)), list(torch._foreach_norm(grads)), **hyper)
        return loss

    def forget_weight_norms(self) -> None:
        """Sum every ‖w‖ afresh at the next step: for code that writes weights through `.data`."""
        self._kept_norms().clear()

    def _kept_norms(self) -> dict[int, KeptNorms]:
        return self.__dict__.setdefault("_weight_norms", {})  # an attribute, not state: never saved

    def _known_weight_squares(self, group: dict[str, Any], packed: native.Packed) -> array:
        """For the C kernel: ‖w‖² of each weight where the group's last step left it and the weight is
        unchanged since, else -1 (sum it)."""
        squares = array("d", [-1.0]) * len(packed.sizes)
        kept = self._kept_norms().get(id(group))
        if kept is None or kept.threads != torch.get_num_threads():
            return squares
        params = packed.tensors[0]
        for k, weight, address, version, square in zip(kept.indices, kept.weights, kept.addresses, kept.versions,
                                                        kept.squares):
            if k < len(params) and params[k] is weight and weight.data_ptr() == address and weight._version == version:
                squares[k] = square
        return squares

    def _keep_weight_squares(self, group: dict[str, Any], packed: native.Packed, squares: array) -> None:
        """Keep the large weights' new ‖w‖² that the kernel wrote into `squares`."""
        kept = self._kept_norms().get(id(group))
        # The same packing as last step (the same weights): the same positions, no search of the sizes.
        indices = kept.indices if kept is not None and kept.sizes is packed.sizes else [
            k for k, n in enumerate(packed.sizes) if n >= KEEP_NORM_MIN]
        weights = [packed.tensors[0][k] for k in indices]
        self._kept_norms()[id(group)] = KeptNorms(
            packed.sizes, indices, weights, [w.data_ptr() for w in weights], [w._version for w in weights],
            [squares[k] for k in indices], torch.get_num_threads())
