"""The first-order claims of `optbench reproduce` (1, 2, 3, 19): the chapter's from-scratch optimizers
against torch in float64, and each claim's rule on constructed numbers, held and not held."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch

from optbench.commands.reproduce import first_order as fo
from optbench.finished_runs import Run
from optbench.optim import textbook
from optim_helpers import clone_params, make_params, run_side_by_side

TOL = 1e-12  # float64: the same maths in another order of operations


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sgd_momentum_equals_torch_sgd(weight_decay):
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = textbook.SGDMomentum(ours_p, lr=0.05, momentum=0.9, weight_decay=weight_decay)
    ref = torch.optim.SGD(ref_p, lr=0.05, momentum=0.9, weight_decay=weight_decay)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_equals_torch_adam(weight_decay):
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = textbook.Adam(ours_p, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    ref = torch.optim.Adam(ref_p, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_rmsprop_equals_torch_where_epsilon_is_zero(momentum):
    # The only difference from torch is where epsilon goes: without it the two are one formula
    # (the gradients here are never zero, so nothing divides by zero).
    ours_p = make_params()
    ref_p = clone_params(ours_p)
    ours = textbook.RMSprop(ours_p, lr=1e-2, alpha=0.9, eps=0.0, weight_decay=0.1, momentum=momentum)
    ref = torch.optim.RMSprop(ref_p, lr=1e-2, alpha=0.9, eps=0.0, weight_decay=0.1, momentum=momentum)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


def _one_step(optimizer_cls: type, grad: torch.Tensor, **kwargs: float) -> torch.Tensor:
    p = torch.zeros_like(grad, requires_grad=True)
    optimizer = optimizer_cls([p], **kwargs)
    p.grad = grad.clone()
    optimizer.step()
    return p.detach()


def test_rmsprop_puts_epsilon_inside_the_root_as_the_chapter_writes_it():
    g = torch.tensor([1e-4, 0.5, -2.0], dtype=torch.float64)
    ours = _one_step(textbook.RMSprop, g, lr=0.1, alpha=0.9, eps=1e-8)
    assert torch.allclose(ours, -0.1 * g / (0.1 * g * g + 1e-8).sqrt(), rtol=1e-14, atol=0)
    theirs = _one_step(torch.optim.RMSprop, g, lr=0.1, alpha=0.9, eps=1e-8)
    # A gradient of 1e-4 has E[g^2] = 1e-9, below epsilon: the two formulas part by a factor ~3.
    assert ours[0].item() == pytest.approx(-0.1 * 1e-4 / math.sqrt(1.1e-8))
    assert theirs[0].item() == pytest.approx(-0.1 * 1e-4 / (math.sqrt(1e-9) + 1e-8))
    assert abs(theirs[0] / ours[0]) > 3


def test_rmsprop_nesterov_steps_along_the_look_ahead():
    g = torch.tensor([0.3, -1.0], dtype=torch.float64)
    mu, alpha, lr = 0.9, 0.9, 0.01
    p = torch.zeros_like(g, requires_grad=True)
    optimizer = textbook.RMSprop([p], lr=lr, alpha=alpha, eps=0.0, momentum=mu, nesterov=True)
    expected = torch.zeros_like(g)
    buf, square_avg = torch.zeros_like(g), torch.zeros_like(g)
    for _ in range(3):
        p.grad = g.clone()
        optimizer.step()
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        scaled = g / square_avg.sqrt()
        buf = mu * buf + scaled
        expected -= lr * (scaled + mu * buf)
    assert torch.allclose(p.detach(), expected, rtol=1e-14, atol=0)
    plain = _one_step(textbook.RMSprop, g, lr=lr, alpha=alpha, eps=0.0, momentum=mu)
    assert not torch.allclose(plain, _one_step(textbook.RMSprop, g, lr=lr, alpha=alpha, eps=0.0, momentum=mu,
                                               nesterov=True))


def test_rmsprop_refuses_nesterov_without_momentum():
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        textbook.RMSprop(make_params(), nesterov=True)


def test_textbook_optimizers_are_usable_from_the_command_line():
    from optbench.build import optimizer_from
    from optbench.config import compose
    from optbench.validate import check_optimizer

    cfg = compose(["optimizer=rmsprop", "optimizer._target_=optbench.optim.textbook.RMSprop",
                   "optimizer.momentum=0.9", "+optimizer.nesterov=true"])
    assert check_optimizer(cfg.optimizer) == []
    optimizer = optimizer_from(cfg.optimizer, make_params())
    assert isinstance(optimizer, textbook.RMSprop)
    assert optimizer.param_groups[0]["nesterov"] is True and optimizer.param_groups[0]["momentum"] == 0.9
    # torch's `fused` means nothing here: refused before any step, not ignored.
    adam = compose(["optimizer=adam", "optimizer._target_=optbench.optim.textbook.Adam"])
    assert any("fused" in problem for problem in check_optimizer(adam.optimizer))
    adam = compose(["optimizer=adam", "optimizer._target_=optbench.optim.textbook.Adam", "~optimizer.fused"])
    assert check_optimizer(adam.optimizer) == []
    assert isinstance(optimizer_from(adam.optimizer, make_params()), textbook.Adam)


# ---- claim 2's measurement on the real model -------------------------------------------------------

def test_side_by_side_finds_equality_and_a_formula_difference():
    kwargs = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-3}
    same = fo.side_by_side(textbook.SGDMomentum, torch.optim.SGD, kwargs, torch.float64, steps=3)
    assert same["max_abs_diff"] <= 1e-15 and same["travelled"] > 1e-4
    damped = functools.partial(torch.optim.SGD, dampening=0.5)  # a formula the chapter does not write
    differ = fo.side_by_side(textbook.SGDMomentum, damped, kwargs, torch.float64, steps=3)
    assert fo.relative(differ) > 0.1


def _parity(sgd: float, adam: float, rmsprop: float) -> dict:
    return {dtype: {"sgd_momentum": {"max_abs_diff": sgd, "travelled": 1.0},
                    "adam": {"max_abs_diff": adam, "travelled": 1.0},
                    "rmsprop": {"max_abs_diff": rmsprop, "travelled": 1.0}} for dtype in fo.PARITY_TOLERANCE}


def test_parity_rule():
    assert fo.parity_holds(_parity(1e-16, 1e-14, 0.9))  # RMSprop is reported, not judged
    assert not fo.parity_holds(_parity(1e-16, 1e-6, 0.0))  # above float64's 1e-9
    assert not fo.parity_holds(_parity(1e-16, 1e-14, 0.9), ("rmsprop",))


# ---- claim 1 -------------------------------------------------------------------------------------

def _run(val_losses: dict[int, float]) -> Run:
    metrics = [{"step": s, "split": "val", "loss": v} for s, v in val_losses.items()]
    return Run(Path("run"), {}, {}, metrics)


def test_steps_to_and_final_loss_read_the_validation_series():
    run = _run({1: 0.5, 2: 2e-3, 3: 9e-4, 4: 5e-4})
    assert fo.steps_to(run, 1e-3) == 3
    assert fo.steps_to(run, 1e-4) is None
    assert fo.final_val_loss(run) == 5e-4
    assert fo.final_val_loss(_run({})) is None


def test_momentum_rule():
    assert fo.momentum_holds({"sgd": [None, 300], "momentum": [99, 103], "nesterov": [98, 102]})
    assert not fo.momentum_holds({"sgd": [None, 100], "momentum": [99, 103], "nesterov": [98, 102]})
    assert not fo.momentum_holds({"sgd": [None], "momentum": [None], "nesterov": [98]})


# ---- claim 3 -------------------------------------------------------------------------------------

def test_adamw_rule():
    p, on_accuracy, held = fo.adamw_verdicts([11.4, 11.6, 11.5], [0.07, 0.09, 0.08])
    assert held and float(p) < 0.05 and on_accuracy == "AdamW better"
    assert not fo.adamw_verdicts([11.4, 11.6, 11.5], [0.01, -0.02, 0.005])[2]  # accuracy: no difference
    assert not fo.adamw_verdicts([0.1, -0.1, 0.05], [0.07, 0.09, 0.08])[2]  # norms: no difference
    assert not fo.adamw_verdicts([11.4], [0.07])[2]  # one seed: no verdict


def test_final_weight_norm_is_the_last_diagnostics_line():
    run = Run(Path("run"), {}, {}, [], [{"step": 10, "weight_norm": {"a": 3.0, "b": 4.0}},
                                        {"step": 20, "weight_norm": {"a": 6.0, "b": 8.0}}])
    assert fo.final_weight_norm(run) == 10.0
    assert math.isnan(fo.final_weight_norm(Run(Path("run"), {}, {}, [])))


# ---- claim 19 ------------------------------------------------------------------------------------

def test_toy_results_and_the_best_lr(tmp_path):
    (tmp_path / "toy.csv").write_text("optimizer,steps to loss < 0.01,final loss\n"
                                      "a,,0.5\nb,1944,0.002\nc,2100,0.001\nd,,nan\n")
    found = fo.toy_results(tmp_path, [1e-3, 3e-3, 1e-2, 3e-2])
    assert found[1] == (3e-3, 1944, 0.002) and found[0][1] is None and math.isnan(found[3][2])
    assert fo.best(found) == (3e-3, 1944, 0.002)  # fewest steps, not the lowest final loss
    assert fo.best([found[3], found[0]]) == found[0]  # none reached: lowest final loss, NaN last
    bouncing = (1.0, 291, 0.04)  # crossed 0.01 once at step 291, ended above it: not converged
    assert fo.best([bouncing, found[1]]) == found[1]
    assert fo.best([bouncing, found[0]]) == bouncing  # still better than never crossing
    assert fo.edge(1e-3, [1e-3, 3e-3]) and not fo.edge(3e-3, [1e-3, 3e-3, 1e-2]) and not fo.edge(1e-3, [1e-3])


def test_exercise1_rule_and_path_distance():
    a, b = [(0.0, 0.0), (1.0, 1.0)], [(0.0, 0.0), (1.0, 1.0005)]
    assert fo.path_distance(a, b) == pytest.approx(5e-4)
    assert fo.path_distance(a, a[:1]) == math.inf  # one diverged and stopped early
    assert fo.exercise1_holds(1944, 7e-16)
    assert not fo.exercise1_holds(None, 0.0)
    assert not fo.exercise1_holds(1944, 4e-5)
    assert fo.folder_name("RMSprop + Nesterov (from scratch)") == "rmsprop_nesterov"


def test_the_scratch_rmsprop_follows_torchs_path_in_float64_with_eps_0_and_parts_from_it_with_eps():
    """Claim 19's parity: the chapter's formula and torch's coincide with eps 0 (to rounding, over the
    first 300 steps); with eps 1e-8 inside the root (the chapter) and outside it (torch) they do not."""
    def distance(eps: str) -> float:
        pair = {"scratch": [*fo.SCRATCH_RMSPROP, "optimizer.lr=0.003", f"optimizer.eps={eps}"],
                "torch": ["optimizer=rmsprop", "optimizer.alpha=0.9", "optimizer.lr=0.003", f"optimizer.eps={eps}"]}
        return fo.path_distance(*fo.toy_paths(pair, fo.PARITY_STEPS, "float64").values())

    assert distance("0") <= fo.PATH_TOLERANCE
    assert distance("1e-8") > 1e3 * fo.PATH_TOLERANCE


def test_adam_resumes_from_its_state_dict():
    params, resumed_p = make_params(), make_params()
    optimizer = textbook.Adam(params, lr=1e-2)
    grads = [torch.full_like(p, 0.5) for p in params]
    for _ in range(3):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    with torch.no_grad():
        for p, q in zip(resumed_p, params):
            p.copy_(q)
    resumed = textbook.Adam(resumed_p, lr=1e-2)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a checkpoint file: no shared tensors
    for ps, opt in ((params, optimizer), (resumed_p, resumed)):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
    assert max((a - b).abs().max().item() for a, b in zip(params, resumed_p)) == 0.0
    assert resumed.state[resumed_p[0]]["step"] == 4
