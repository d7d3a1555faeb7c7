"""optbench's own optimizers in whole runs: Muon+AdamW through checkpoints and a resume, and the
trust ratios of LAMB and LARS in diagnostics.jsonl (inside Lookahead too)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from conftest import read_summary, run_cli
from optbench.config import job_config
from optbench.optim import SophiaG, wrapping
from optbench.trainer import Trainer

QUIET = ["trainer.progress=false", "trainer.tensorboard=false"]


@pytest.mark.slow
def test_muon_checkpoints_and_resumes_to_the_same_weights(workdir):
    """Checkpoints at steps 10 and 20; a second run resumed from step 10's, in a fresh folder,
    ends with the first one's weights."""
    command = ["run", "optimizer=muon", "trainer.max_steps=20", "trainer.checkpoint_every=10",
               "trainer.deterministic=true", *QUIET]
    env = {"OMP_NUM_THREADS": "1"}  # the same reductions in both processes
    whole = run_cli(*command, f"hydra.run.dir={workdir / 'whole'}", cwd=workdir, env=env)
    assert whole.returncode == 0, whole.stderr
    step10 = workdir / "whole" / "checkpoints" / "previous.pt"
    assert torch.load(step10, weights_only=True)["progress"]["step"] == 10
    resumed = run_cli(*command, f"hydra.run.dir={workdir / 'resumed'}", f"trainer.resume={step10}",
                      cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    # A fresh run would end with the same weights too: it must have started from step 10.
    assert f"resumed from {step10} at step 10" in (workdir / "resumed" / "optbench.log").read_text()

    ends = [torch.load(workdir / run / "checkpoints" / "last.pt", weights_only=True) for run in ("whole", "resumed")]
    assert ends[0]["progress"]["step"] == ends[1]["progress"]["step"] == 20
    assert set(ends[0]["optimizer"]) == {"muon", "adamw"}  # the CLI's MLP has a hidden matrix for Muon
    for name, weight in ends[0]["model"].items():
        assert torch.equal(weight, ends[1]["model"][name]), name
    summaries = [read_summary(workdir / run) for run in ("whole", "resumed")]
    assert summaries[0]["optimizer_state_bytes"] == summaries[1]["optimizer_state_bytes"] > 0


def test_trainer_refreshes_the_hessian_of_a_sophia_inside_lookahead(tmp_path):
    overrides = ["optimizer=lookahead", "optimizer@optimizer.inner=sophia", "optimizer.inner.hessian_interval=2",
                 "+optimizer.inner.fused=false"]  # the plain update: no compile time
    trainer = Trainer(job_config([*QUIET, *overrides, "trainer.max_steps=4"]), tmp_path)
    trainer.fit()
    (sophia,) = wrapping.leaves(trainer.optimizer)
    assert isinstance(sophia, SophiaG)
    assert all(s["hessian"].abs().sum() > 0 for s in sophia.state.values())


Group = dict[str, Any]


def lamb_first_ratio(w: Tensor, g: Tensor, group: Group) -> Tensor:
    """‖w‖/‖u‖ at LAMB's first step, where the bias-corrected moments are g and g²."""
    update = g / (g.abs() + group["eps"]) + group["weight_decay"] * w
    return w.norm() / update.norm()


def lars_first_ratio(w: Tensor, g: Tensor, group: Group) -> Tensor:
    """η‖w‖/(‖g‖ + β‖w‖ + ε), You et al.'s local LR; 1 in a group that LARS leaves unadapted (no decay)."""
    if group["weight_decay"] == 0 and not group["always_adapt"]:
        return torch.tensor(1.0)
    return group["trust_coefficient"] * w.norm() / (g.norm() + group["weight_decay"] * w.norm() + group["eps"])


TRUST = {
    "lamb": (["optimizer=lamb"], lamb_first_ratio),
    "lars": (["optimizer=lars"], lars_first_ratio),
    "lookahead over lamb": (["optimizer=lookahead", "optimizer@optimizer.inner=lamb"], lamb_first_ratio),
}


@pytest.mark.parametrize("case", list(TRUST))
def test_trust_ratios_reach_diagnostics(tmp_path, case):
    overrides, first_ratio = TRUST[case]
    trainer = Trainer(job_config([*QUIET, *overrides, "trainer.diagnostics_every=1", "trainer.max_steps=3"]),
                      tmp_path)
    names = {p: n for n, p in trainer.model.named_parameters()}
    first: dict[str, tuple[Tensor, Tensor, Group]] = {}

    def keep_first_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if not first:  # weights and gradients as the first step gets them, in float64
            first.update({names[p]: (p.detach().double(), p.grad.double(), group)
                          for group in optimizer.param_groups for p in group["params"]})

    trainer.optimizer.register_step_pre_hook(keep_first_step)
    trainer.fit()

    records = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(set(r["trust_ratio"]) == set(names.values()) for r in records)
    expected = {name: first_ratio(w, g, group).item() if w.norm() > 0 else 1.0  # 1 for a zero weight
                for name, (w, g, group) in first.items()}
    assert records[0]["trust_ratio"] == pytest.approx(expected, rel=1e-5)
    assert records[1]["trust_ratio"] != records[0]["trust_ratio"]  # each step's own, not the first's again
