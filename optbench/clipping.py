"""Gradient clipping beyond torch's own: adaptive gradient clipping (AGC)."""

from __future__ import annotations

import torch


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm of each output unit (row of a matrix, filter of a convolution); whole norm for vectors."""
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    # vector_norm, not Tensor.norm: over three dimensions (a convolution's filter) the latter asks
    # for a matrix norm and raises.
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(params: list[torch.nn.Parameter], clip: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021, arXiv:2102.06171, eq. 3), in place.

    Each unit's gradient is scaled down to at most `clip` times the unit's weight norm (at
    least `eps`, so that zero-initialised weights can still move).
    """
    for p in params:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p).clamp_min(eps) * clip
        grad_norm = unitwise_norm(p.grad)
        scale = (max_norm / grad_norm.clamp_min(1e-6)).clamp(max=1.0)
        p.grad.mul_(scale)
