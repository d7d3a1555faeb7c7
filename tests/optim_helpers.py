"""Helpers for the optimizer tests: fixed float64 parameters, shared gradients, reference imports."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

import pytest
import torch

# A matrix, a vector and a small 3-D tensor: what a layer, its bias and a conv filter look like.
SHAPES = [(6, 5), (5,), (2, 3, 3)]


def make_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in SHAPES]


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def gradient_stream(steps: int, seed: int = 1) -> Iterator[list[torch.Tensor]]:
    """The same pseudo-random gradients for every optimizer under test, step after step."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b))


def run_side_by_side(ours: torch.optim.Optimizer, ours_params: list[torch.Tensor],
                     ref: torch.optim.Optimizer, ref_params: list[torch.Tensor], steps: int = 60,
                     after_step: Callable[[int], None] | None = None) -> float:
    """Step both optimizers on the same gradients; the largest parameter difference seen."""
    worst = 0.0
    for step, grads in enumerate(gradient_stream(steps), start=1):
        for params in (ours_params, ref_params):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        ours.step()
        ref.step()
        if after_step is not None:
            after_step(step)
        worst = max(worst, max_abs_diff(ours_params, ref_params))
    return worst


def reference(module: str, attr: str) -> type:
    """A reference class, or skip the test saying which package is missing."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        pytest.skip(f"reference {module}.{attr} is not installed ({e}); pip install -e '.[test]'")
