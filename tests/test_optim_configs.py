"""Every optimizer config in configs/optimizer/: it steps, round-trips its state, and converges.

Convergence: a quadratic (a few matrices and a vector, curvatures 1 to 10) and the Rosenbrock
function, from fixed starts, with the LR and step budget of TOY (the configs' LRs suit networks, not these
problems) decayed to zero by a cosine over the step budget, and weight decay off (it moves the
minimum). optbench's own optimizers run their plain path here; test_optim_fused.py checks that
the compiled path computes the same.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math

import pytest
import torch
from omegaconf import OmegaConf

from optbench.build import optimizer_from
from optbench.targets import import_path as locate
from optbench.config import compose
from optbench.paths import configs_dir

NAMES = sorted(p.stem for p in (configs_dir() / "optimizer").glob("*.yaml"))

# Overrides that make a config composable on its own.
EXTRA = {"lookahead": ["optimizer@optimizer.inner=adamw"]}

QUADRATIC_STEPS, QUADRATIC_TARGET = 300, 1e-3  # loss below 0.1% of where it started
ROSENBROCK_TARGET = 0.2  # distance to the minimum (1, 1), from (-0.5, 0.5): 1.66 away

# name: (quadratic LR, Rosenbrock LR, Rosenbrock step budget). For lookahead the inner LR and for
# muon the AdamW LR are set too. Rosenbrock's curved valley takes plain SGD, Adagrad and RAdam
# (its long warm-up with beta2=0.999) several thousand steps. LARS without weight decay takes
# momentum's SGD steps (lars.yaml's always_adapt: false): momentum's settings.
TOY = {
    "adafactor": (0.1, 0.1, 2500), "adagrad": (0.5, 0.3, 5000), "adam": (0.1, 0.3, 600), "gan_adam": (0.1, 0.1, 2500),
    "adam8bit": (0.1, 0.3, 600), "adamw": (0.1, 0.3, 600), "adamw8bit": (0.1, 0.3, 600),
    "lamb": (0.1, 0.03, 2500), "lars": (0.05, 0.002, 600), "lion": (0.1, 0.03, 600),
    "lookahead": (0.1, 0.1, 2500), "momentum": (0.05, 0.002, 600), "muon": (0.1, 0.03, 600),
    "nadam": (0.1, 0.03, 2500), "nesterov": (0.05, 0.002, 600), "radam": (0.1, 0.007, 5000),
    "rmsprop": (0.05, 0.01, 2500), "sgd": (0.15, 0.003, 5000), "sophia": (0.1, 0.01, 600),
}


def test_every_config_has_toy_settings():
    assert sorted(TOY) == NAMES


@functools.cache
def _composed(name: str) -> dict:
    """The config's optimizer node as a plain dict (composing takes half a second: once per config)."""
    return OmegaConf.to_container(compose([f"optimizer={name}", *EXTRA.get(name, [])]).optimizer)


def optimizer_node(name: str, lr: float | None = None, toy: bool = False):
    if name.endswith("8bit") and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (pip install 'bitsandbytes>=0.50')")
    node = OmegaConf.create(_composed(name))
    # The optimizer and any optimizer nested in it (Lookahead's inner one); not its `_search` space.
    for sub in [node, *(v for v in node.values() if OmegaConf.is_dict(v) and "_target_" in v)]:
        if str(sub._target_).startswith("optbench.optim.") and "fused" in _params(sub._target_):
            sub.fused = False
        if toy:
            for key in ("weight_decay", "adamw_weight_decay"):
                if key in sub:
                    sub[key] = 0.0
            for key in ("lr", "adamw_lr"):
                if key in sub and lr is not None:
                    sub[key] = lr
    return node


def _params(target: str) -> set[str]:
    import inspect

    return set(inspect.signature(locate(target)).parameters)


def quadratic_params() -> tuple[list[torch.Tensor], callable]:
    shapes = [(3, 4), (4, 4), (4, 3), (5,)]
    gen = torch.Generator().manual_seed(0)
    centres = [torch.randn(s, generator=gen) for s in shapes]
    curvatures = [torch.linspace(1.0, 10.0, math.prod(s)).view(s) for s in shapes]
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]

    def loss() -> torch.Tensor:
        return sum(0.5 * (a * (p - c) ** 2).sum() for p, a, c in zip(params, curvatures, centres))

    return params, loss


def rosenbrock_params() -> tuple[list[torch.Tensor], callable]:
    xy = torch.tensor([-0.5, 0.5], requires_grad=True)

    def loss() -> torch.Tensor:
        return (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2

    return [xy], loss


def train(optimizer: torch.optim.Optimizer, loss, steps: int, cosine: bool = True) -> None:
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if cosine else None
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()


@pytest.mark.parametrize("name", NAMES)
def test_one_step_moves_parameters(name):
    params, loss = quadratic_params()
    before = [p.detach().clone() for p in params]
    optimizer = optimizer_from(optimizer_node(name), params)
    train(optimizer, loss, 1, cosine=False)
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name):
    params, loss = quadratic_params()
    optimizer = optimizer_from(optimizer_node(name), params)
    train(optimizer, loss, 7, cosine=False)  # past Lookahead's first sync (k=5)
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(optimizer.state_dict())
    train(optimizer, loss, 6, cosine=False)
    expected = [p.detach().clone() for p in params]

    with torch.no_grad():
        for p, s in zip(params, saved_params):
            p.copy_(s)
    restored = optimizer_from(optimizer_node(name), params)
    restored.load_state_dict(saved_state)
    train(restored, loss, 6, cosine=False)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_quadratic(name):
    params, loss = quadratic_params()
    start = loss().item()
    train(optimizer_from(optimizer_node(name, TOY[name][0], toy=True), params), loss, QUADRATIC_STEPS)
    assert loss().item() < QUADRATIC_TARGET * start, f"{name}: loss {loss().item():.3g} from {start:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_rosenbrock(name):
    params, loss = rosenbrock_params()
    lr, steps = TOY[name][1:]
    train(optimizer_from(optimizer_node(name, lr, toy=True), params), loss, steps)
    distance = (params[0].detach() - torch.ones(2)).norm().item()
    assert distance < ROSENBROCK_TARGET, f"{name}: ended at {params[0].tolist()}, {distance:.3g} from (1, 1)"
