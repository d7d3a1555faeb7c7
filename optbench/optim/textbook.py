"""The chapter's from-scratch optimizers, written from its formulas (sections 2.2, 3.2, 3.3; Exercise 1).

These are not faster or better than torch's: they exist so that the chapter's equations can be run
and compared with torch.optim (`optbench reproduce parity` measures the difference, float64 and
float32, on a real model). Each reads like the chapter's equations, one tensor at a time.

Where the chapter's formula differs from torch's, the formula wins here, and the difference is
what the parity claim measures:
- RMSprop: the chapter puts epsilon inside the root, eta / sqrt(E[g^2] + eps); torch.optim.RMSprop
  adds it outside, eta / (sqrt(E[g^2]) + eps).
- SGDMomentum and Adam: the same maths as torch's (dampening 0; bias-corrected moments), in
  another order of operations.

From the command line (`_target_` replaces torch's class; torch's `fused` flag has no meaning here
and is refused, so the configs that set it drop it with `~`):
    optbench run optimizer=adam optimizer._target_=optbench.optim.textbook.Adam '~optimizer.fused'
    optbench toy optimizer=rmsprop optimizer._target_=optbench.optim.textbook.RMSprop optimizer.lr=3e-3
    optbench toy optimizer=rmsprop optimizer._target_=optbench.optim.textbook.RMSprop \
        optimizer.momentum=0.9 +optimizer.nesterov=true
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from optbench.optim.base import check_hyperparameters, evaluate_closure
from optbench.schema import Fraction, NonNegativeFloat


class TextbookOptimizer(torch.optim.Optimizer):
    """What the three share: each parameter with a gradient, its state created on first use."""

    def _with_grads(self) -> Iterator[tuple[dict[str, Any], Tensor]]:
        """Each parameter that has a gradient this step, with its group."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    yield group, p

    def _state(self, p: Tensor, *names: str) -> dict[str, Any]:
        """The state of `p`, with the tensors `names` created as zeros on first use."""
        state = self.state[p]
        for name in names:
            if name not in state:  # also a momentum buffer for a group whose momentum was 0 until now
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state


class SGDMomentum(TextbookOptimizer):
    """Section 2.2: v_t = beta v_{t-1} + g_t;  theta_{t+1} = theta_t - eta v_t  (g with L2 decay added).

    torch.optim.SGD(momentum=beta, dampening=0) is the same update: its first step sets v to g,
    which is beta * 0 + g.
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 0.01, momentum: Fraction = 0.9,
                 weight_decay: NonNegativeFloat = 0.0):
        check_hyperparameters(lr, weight_decay=weight_decay, momentum=momentum)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        for group, p in self._with_grads():
            state = self._state(p, "velocity")
            grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
            v = state["velocity"]
            v.mul_(group["momentum"]).add_(grad)  # v_t = beta v_{t-1} + g_t
            p.sub_(group["lr"] * v)  # theta_{t+1} = theta_t - eta v_t
        return loss


class Adam(TextbookOptimizer):
    """Section 3.3: bias-corrected first and second moments;
    theta_{t+1} = theta_t - eta m_hat_t / (sqrt(v_hat_t) + eps)  (L2 decay added to g, as the chapter's code).
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 1e-3,
                 betas: tuple[Fraction, Fraction] = (0.9, 0.999), eps: NonNegativeFloat = 1e-8,
                 weight_decay: NonNegativeFloat = 0.0):
        check_hyperparameters(lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        for group, p in self._with_grads():
            beta1, beta2 = group["betas"]
            state = self._state(p, "exp_avg", "exp_avg_sq")
            t = state["step"] = state.get("step", 0) + 1
            grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_((1 - beta1) * grad)  # m_t = beta1 m_{t-1} + (1 - beta1) g_t
            v.mul_(beta2).add_((1 - beta2) * grad * grad)  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
            m_hat = m / (1 - beta1**t)
            v_hat = v / (1 - beta2**t)
            p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))
        return loss


class RMSprop(TextbookOptimizer):
    """Section 3.2: E[g^2]_t = alpha E[g^2]_{t-1} + (1 - alpha) g_t^2;
    theta_{t+1} = theta_t - eta g_t / sqrt(E[g^2]_t + eps)  (epsilon inside the root, as the chapter writes it).

    `momentum` (torch's form): b_t = mu b_{t-1} + g_t / sqrt(E[g^2]_t + eps), theta -= eta b_t.
    `nesterov` (Exercise 1's bonus): the step looks ahead along the momentum, theta -= eta (s_t + mu b_t)
    with s_t = g_t / sqrt(E[g^2]_t + eps): Sutskever et al.'s (2013) form of section 2.3's look-ahead,
    the one torch.optim.SGD(nesterov=True) uses.
    """

    def __init__(self, params: Any, lr: NonNegativeFloat = 1e-2, alpha: Fraction = 0.99,
                 eps: NonNegativeFloat = 1e-8, weight_decay: NonNegativeFloat = 0.0,
                 momentum: Fraction = 0.0, nesterov: bool = False):
        check_hyperparameters(lr, eps=eps, weight_decay=weight_decay, momentum=momentum)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"Invalid alpha value: {alpha}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = evaluate_closure(closure)
        for group, p in self._with_grads():
            alpha, mu = group["alpha"], group["momentum"]
            state = self._state(p, "square_avg", *(("momentum_buffer",) if mu else ()))
            grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
            square_avg = state["square_avg"]
            square_avg.mul_(alpha).add_((1 - alpha) * grad * grad)  # E[g^2]_t
            scaled = grad / (square_avg + group["eps"]).sqrt()  # g_t / sqrt(E[g^2]_t + eps)
            if mu:
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(scaled)
                scaled = scaled + mu * buf if group["nesterov"] else buf
            p.sub_(group["lr"] * scaled)
        return loss
