"""The trainer's Hessian hook: SophiaG's estimate is refreshed every `hessian_interval` steps."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from optbench.config import compose
from optbench.optim import SophiaG
from optbench.trainer import Trainer


def trained_sophia(tmp_path, interval: int) -> SophiaG:
    cfg = compose(["optimizer=sophia", f"optimizer.hessian_interval={interval}", "+optimizer.fused=false",
                   "trainer.max_steps=4", "trainer.progress=false", "trainer.tensorboard=false"])
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    trainer = Trainer(cfg, tmp_path)
    trainer.fit()
    assert isinstance(trainer.optimizer, SophiaG)
    return trainer.optimizer


@pytest.mark.parametrize("interval, refreshed", [(2, True), (100, False)])
def test_trainer_refreshes_the_hessian_when_due(tmp_path, interval, refreshed):
    optimizer = trained_sophia(tmp_path, interval)
    total = sum(s["hessian"].abs().sum().item() for s in optimizer.state.values())
    assert (total > 0) == refreshed


def test_update_hessian_leaves_grads_and_counts_predictions():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    optimizer = SophiaG(model.parameters(), betas=(0.9, 0.5), fused=False)
    assert [optimizer.wants_hessian(s) for s in range(1, 21)].count(True) == 2
    optimizer.update_hessian(model, torch.randn(6, 3))
    assert all(p.grad is None for p in model.parameters())
    # One refresh from zero: h = (1 - β2)·B·ĝ⊙ĝ, B = 6 predictions; ĝ recomputed here.
    torch.manual_seed(1)
    optimizer.state.clear()
    inputs = torch.randn(6, 3)
    torch.manual_seed(2)
    optimizer.update_hessian(model, inputs)
    torch.manual_seed(2)
    logits = model(inputs)
    sampled = torch.distributions.Categorical(logits=logits.detach()).sample()
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, sampled), list(model.parameters()))
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(optimizer.state[p]["hessian"], 0.5 * 6 * g * g)
