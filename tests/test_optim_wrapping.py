"""optbench.optim.wrapping: what the trainer asks of an optimizer reaches every optimizer inside a wrapper.

The cases come from configs/optimizer/: each config whose optimizer is a wrapper, with every
config that is not a wrapper in each slot where it takes another optimizer
(`/optimizer@inner: ???`), or alone where it builds its inner optimizers itself (MuonWithAdamW).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from optbench.build import optimizer_from
from optbench.targets import import_path as locate
from optbench.optim import wrapping
from optbench.paths import configs_dir
from test_optim_configs import NAMES, optimizer_node


def _config(name: str) -> DictConfig:
    return OmegaConf.load(configs_dir() / "optimizer" / f"{name}.yaml")


def _is(name: str, protocol: type) -> bool:
    """Whether the config's optimizer class has `protocol`; only optbench's classes do (and only they
    are imported here, not bitsandbytes)."""
    target = str(_config(name)._target_)
    return target.startswith("optbench.optim.") and issubclass(locate(target), protocol)


def _inner_slots(name: str) -> list[str]:
    """The keys where the config `name` takes another optimizer option (`/optimizer@KEY: ???`)."""
    return [key.split("@", 1)[1] for entry in _config(name).get("defaults", []) if OmegaConf.is_dict(entry)
            for key in entry if str(key).startswith("/optimizer@")]


WRAPPERS = [n for n in NAMES if _is(n, wrapping.Wrapper)]
INNERS = [n for n in NAMES if n not in WRAPPERS]
CASES = [(w, slot, inner) for w in WRAPPERS for slot in _inner_slots(w) for inner in INNERS]
CASES += [(w, None, None) for w in WRAPPERS if not _inner_slots(w)]
IDS = [w if slot is None else f"{w}.{slot}={inner}" for w, slot, inner in CASES]
HESSIAN_CASES = [c for c in CASES if c[2] is not None and _is(c[2], wrapping.EstimatesHessian)]


def test_the_cases_cover_both_kinds_of_wrapper():
    assert {"lookahead", "muon"} <= set(WRAPPERS) and "sophia" in INNERS
    assert ("lookahead", "inner", "sophia") in HESSIAN_CASES and ("muon", None, None) in CASES


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_holding_another_declares_it(name):
    """An optimizer that keeps another in an attribute (directly or in a container) is a Wrapper
    and names exactly those: otherwise the trainer's questions would stop at it."""
    model = _model()
    optimizer = optimizer_from(optimizer_node(name), list(model.parameters()))
    held = []
    for value in vars(optimizer).values():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
        held += [v for v in values if isinstance(v, torch.optim.Optimizer)]
    if held:
        assert isinstance(optimizer, wrapping.Wrapper)
        assert {id(o) for o in optimizer.wrapped_optimizers()} == {id(o) for o in held}
    else:
        assert not isinstance(optimizer, wrapping.Wrapper) and wrapping.leaves(optimizer) == [optimizer]


def _model() -> nn.Module:
    """Three matrices, so that Muon gets the middle one and AdamW the edges and biases."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return torch.randn(16, 6, generator=gen), torch.randint(0, 4, (16,), generator=gen)


def case_node(case: tuple[str, str | None, str | None], lr: float | None = None, toy: bool = False) -> DictConfig:
    """The config of the wrapper with its inner optimizer; `lr` and `toy` as in `optimizer_node`."""
    wrapper, slot, inner = case
    node = optimizer_node(wrapper, lr, toy)
    if slot is not None:
        node[slot] = optimizer_node(inner, lr, toy)
    return node


def _build(case: tuple[str, str | None, str | None], model: nn.Module) -> torch.optim.Optimizer:
    return optimizer_from(case_node(case), list(model.parameters()))


def _train(optimizer: torch.optim.Optimizer, model: nn.Module, steps: range) -> None:
    """As the trainer steps: backward, step, then the Hessian refresh that is due."""
    for step in steps:
        torch.manual_seed(step)  # SophiaG samples its labels: the same ones in a rerun
        inputs, labels = _batch(step)
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        wrapping.refresh_hessian(optimizer, step, model, inputs)


def _keys(optimizer: torch.optim.Optimizer) -> list[set[int]]:
    """The parameters with state, in each optimizer inside `optimizer` and in its own view."""
    return [{id(p) for p in opt.state} for opt in [optimizer, *wrapping.leaves(optimizer)]]


@pytest.mark.parametrize("case", HESSIAN_CASES, ids=[IDS[CASES.index(c)] for c in HESSIAN_CASES])
def test_refresh_hessian_reaches_every_sophia_inside(case):
    model = _model()
    optimizer = _build(case, model)
    sophias = [leaf for leaf in wrapping.leaves(optimizer) if isinstance(leaf, wrapping.EstimatesHessian)]
    assert sophias
    _train(optimizer, model, range(1, 21))  # every interval up to 20 falls due
    for leaf in sophias:
        hessians = [leaf.state[p]["hessian"] for g in leaf.param_groups for p in g["params"]]
        assert all(h.abs().sum() > 0 for h in hessians)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_bytes_sums_the_leaves_and_creates_no_state(case):
    model = _model()
    optimizer = _build(case, model)
    _train(optimizer, model, range(1, 8))  # past Lookahead's first sync (k=5)
    keys = _keys(optimizer)
    total = wrapping.state_bytes(optimizer)
    per_leaf = [sum(t.numel() * t.element_size() for s in leaf.state.values() for t in s.values()
                    if isinstance(t, torch.Tensor)) for leaf in wrapping.leaves(optimizer)]
    assert total == sum(per_leaf) > 0
    list(optimizer.state.items())  # as PeakMemory reads it
    assert _keys(optimizer) == keys
    optimizer.state_dict()  # fails where a read put a parameter into the wrong optimizer's state


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_trust_ratios_come_through(case):
    model = _model()
    optimizer = _build(case, model)
    _train(optimizer, model, range(1, 3))
    assert wrapping.trust_ratios(optimizer) == {}  # nothing asked for: nothing kept
    wrapping.request_trust_ratios(optimizer)
    _train(optimizer, model, range(3, 4))
    expected = {p: r.item() for leaf in wrapping.leaves(optimizer) if isinstance(leaf, wrapping.ReportsTrustRatios)
                for p, r in leaf.trust_ratios().items()}
    reporting = [leaf for leaf in wrapping.leaves(optimizer) if isinstance(leaf, wrapping.ReportsTrustRatios)]
    assert {id(p) for p in expected} == {id(p) for leaf in reporting for g in leaf.param_groups for p in g["params"]}
    assert wrapping.trust_ratios(optimizer) == expected
    assert all(r > 0 for r in expected.values())
    _train(optimizer, model, range(4, 5))  # a step not asked for keeps the earlier step's ratios
    assert wrapping.trust_ratios(optimizer) == expected


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dict_round_trip_continues_identically(case):
    model = _model()
    optimizer = _build(case, model)
    _train(optimizer, model, range(1, 13))  # past Lookahead's sync and SophiaG's Hessian refresh
    # What the trainer asks between steps must not change what is saved or how it continues.
    wrapping.state_bytes(optimizer)
    list(optimizer.state.items())
    wrapping.request_trust_ratios(optimizer)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    _train(optimizer, model, range(13, 25))
    expected = copy.deepcopy(model.state_dict())

    model.load_state_dict(saved_model)
    restored = _build(case, model)
    restored.load_state_dict(saved_state)
    wrapping.request_trust_ratios(restored)
    _train(restored, model, range(13, 25))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
