"""The compiled (fused) path of each optimizer against its plain per-tensor path, in float64."""

from __future__ import annotations

import pytest
import torch

from optbench.optim import Lamb, Lars, Lion, SophiaG
from optim_helpers import clone_params, make_params, run_side_by_side

OPTIMIZERS = {
    "lion": lambda params, fused: Lion(params, lr=1e-2, weight_decay=0.1, fused=fused),
    "lamb": lambda params, fused: Lamb(params, lr=1e-2, weight_decay=0.05, fused=fused),
    "lars": lambda params, fused: Lars(params, lr=0.5, weight_decay=1e-3, trust_coefficient=0.01, fused=fused),
    "sophia": lambda params, fused: SophiaG(params, lr=1e-2, weight_decay=0.1, fused=fused),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_matches_plain(name):
    plain_p = make_params()
    fused_p = clone_params(plain_p)
    plain = OPTIMIZERS[name](plain_p, False)
    fused = OPTIMIZERS[name](fused_p, True)
    if name == "sophia":  # a nonzero Hessian estimate, the same for both
        for opt, params in ((plain, plain_p), (fused, fused_p)):
            for p in params:
                opt._state(p)["hessian"].copy_(torch.linspace(0.0, 2.0, p.numel(), dtype=p.dtype).view_as(p))

    def change_lr(step: int) -> None:  # as a scheduler does: no recompilation, same numbers
        for opt in (plain, fused):
            for group in opt.param_groups:
                group["lr"] *= 0.97

    assert run_side_by_side(fused, fused_p, plain, plain_p, steps=50, after_step=change_lr) <= 1e-12


def test_fused_falls_back_when_compiling_fails(monkeypatch, caplog):
    from optbench.optim import base

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
        return compiled

    monkeypatch.setattr(base.torch, "compile", broken_compile)
    kernel = base.StepKernel(lambda params, *, lr: [p.sub_(lr) for p in params])
    params = [torch.zeros(3)]
    kernel(None, params, lr=1.0)
    kernel(None, params, lr=1.0)
    assert torch.equal(params[0], torch.full((3,), -2.0))
    assert "using the plain path" in caplog.text
    with pytest.raises(RuntimeError, match="InvalidCxxCompiler"):
        base.StepKernel(kernel.plain)(True, params, lr=1.0)
