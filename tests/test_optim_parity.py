"""optbench's optimizers against implementations that we did not write.

Same float64 parameters, same gradients, 60 steps; the parameters may differ by at most 1e-10
(rounding differs: the references order some operations differently).
"""

from __future__ import annotations

import pytest
import torch

from optbench.optim import Lamb, Lars, Lion, Lookahead, SophiaG
from optim_helpers import clone_params, make_params, reference, run_side_by_side
from test_optim_generic import ROSENBROCK_START_DISTANCE, cyclic_rosenbrock

TOL = 1e-10


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("module, cls", [("lion_pytorch", "Lion"), ("timm.optim", "Lion")])
def test_lion_matches_reference(module, cls, weight_decay):
    Ref = reference(module, cls)
    ours_p, ref_p = make_params(), make_params()
    ours = Lion(ours_p, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay, fused=False)
    ref = Ref(ref_p, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_lamb_matches_timm(weight_decay, foreach):
    # timm's NVLAMB variant equals the paper's LAMB with global gradient clipping off and the
    # trust ratio applied to every tensor (always_adapt), decay added to the update (not decoupled).
    Ref = reference("timm.optim", "Lamb")
    ours_p, ref_p = make_params(), make_params()
    ours = Lamb(ours_p, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay, fused=False)
    ref = Ref(ref_p, lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay, max_grad_norm=None,
              always_adapt=True, decoupled_decay=False, grad_averaging=True, foreach=foreach)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


def _no_decay_for_the_bias(params: list[torch.Tensor]) -> list[dict]:
    """A matrix and a filter in the default group, the bias in one without decay (as params=no_decay)."""
    return [{"params": [params[0], params[2]]}, {"params": [params[1]], "weight_decay": 0.0}]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
@pytest.mark.parametrize("always_adapt", [False, True])
def test_lars_matches_timm(always_adapt, weight_decay, foreach):
    """Both behaviours: the trust ratio only in groups with decay (the default), or everywhere."""
    Ref = reference("timm.optim", "Lars")
    ours_p, ref_p = make_params(), make_params()
    ours = Lars(_no_decay_for_the_bias(ours_p), lr=0.5, momentum=0.9, weight_decay=weight_decay,
                trust_coefficient=0.01, always_adapt=always_adapt, fused=False)
    ref = Ref(_no_decay_for_the_bias(ref_p), lr=0.5, momentum=0.9, weight_decay=weight_decay, trust_coeff=0.01,
              eps=1e-8, always_adapt=always_adapt, foreach=foreach)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


@pytest.mark.parametrize("always_adapt, expected", [(False, 0.4388), (True, 0.7071)])
def test_lars_on_cyclic_rosenbrock_ends_where_timms_does(always_adapt, expected):
    """lr 1e-3 and timm's defaults (momentum 0, no decay): the default takes SGD steps and ends 0.44 from
    the minimum; adapting the 2-vector too, its steps are about γη‖w‖ = 2e-6 long and it ends no
    closer than the 0.7071 it started at."""
    Ref = reference("timm.optim", "Lars")
    ours = cyclic_rosenbrock(lambda params: Lars(params, lr=1e-3, momentum=0.0, always_adapt=always_adapt,
                                                 fused=False))
    ref = cyclic_rosenbrock(lambda params: Ref(params, lr=1e-3, always_adapt=always_adapt))
    assert ours == pytest.approx(ref, abs=TOL) and ours == pytest.approx(expected, abs=1e-4)
    assert (ours < ROSENBROCK_START_DISTANCE) == (not always_adapt)


def test_lars_state_saved_before_always_adapt_resumes_adapting_every_tensor():
    Ref = reference("timm.optim", "Lars")
    ours_p, ref_p = make_params(), make_params()
    ours = Lars(ours_p, lr=0.5, momentum=0.9, trust_coefficient=0.01, fused=False)
    saved = ours.state_dict()
    del saved["param_groups"][0]["always_adapt"]
    ours.load_state_dict(saved)
    ref = Ref(ref_p, lr=0.5, momentum=0.9, trust_coeff=0.01, eps=1e-8, always_adapt=True)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


class AuthorsSophiaG:
    """The SophiaG update of the authors' sophia.py (github.com/Liuhong99/Sophia), transcribed.

    Per step: θ ← θ(1 − lr·wd); m ← β1 m + (1 − β1) g; θ ← θ − lr · sign(m) · min(|m| / (ρ·bs·h + 1e-15), 1).
    Hessian refresh from the gradient ĝ on sampled labels: h ← β2 h + (1 − β2) ĝ⊙ĝ.
    """

    def __init__(self, params, lr, betas, rho, weight_decay):
        self.params, self.lr, self.betas, self.rho, self.wd = params, lr, betas, rho, weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.h = [torch.zeros_like(p) for p in params]
        self.bs = 1

    @torch.no_grad()
    def update_hessian(self, grads, bs):
        self.bs = bs
        for h, g in zip(self.h, grads):
            h.mul_(self.betas[1]).addcmul_(g, g, value=1 - self.betas[1])

    @torch.no_grad()
    def step(self):
        for p, m, h in zip(self.params, self.m, self.h):
            p.mul_(1 - self.lr * self.wd)
            m.mul_(self.betas[0]).add_(p.grad, alpha=1 - self.betas[0])
            ratio = (m.abs() / (self.rho * self.bs * h + 1e-15)).clamp(None, 1)
            p.addcmul_(m.sign(), ratio, value=-self.lr)


def test_sophia_matches_authors_rule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    ref_model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    ref_model.load_state_dict(model.state_dict())
    inputs = torch.randn(8, 5, dtype=torch.float64)
    ours_p, ref_p = list(model.parameters()), list(ref_model.parameters())
    ours = SophiaG(ours_p, lr=1e-2, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1, hessian_interval=10, fused=False)
    ref = AuthorsSophiaG(ref_p, lr=1e-2, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(1, 61):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ours_p]
        for p, q, g in zip(ours_p, ref_p, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        if ours.wants_hessian(step):
            # The authors' training loop: sample labels from the model, backprop their mean loss.
            torch.manual_seed(step)
            ours.update_hessian(model, inputs)
            torch.manual_seed(step)
            logits = ref_model(inputs)
            sampled = torch.distributions.Categorical(logits=logits.detach()).sample()
            loss = torch.nn.functional.cross_entropy(logits, sampled)
            ref.update_hessian(torch.autograd.grad(loss, ref_p), bs=len(inputs))
        worst = max(worst, max((p - q).abs().max().item() for p, q in zip(ours_p, ref_p)))
    assert step == 60 and ours.state[ours_p[0]]["hessian"].abs().sum() > 0
    assert worst <= TOL


def test_lookahead_matches_timm():
    # timm creates its slow weights at the first sync; syncing once before training sets them to
    # θ0 as the paper does (timm keeps them in the inner state, so the inner must not need an
    # empty state to initialise: SGD with momentum).
    Ref = reference("timm.optim", "Lookahead")
    ours_p, ref_p = make_params(), make_params()
    ours = Lookahead(torch.optim.SGD(ours_p, lr=0.05, momentum=0.9), k=5, alpha=0.5)
    ref = Ref(torch.optim.SGD(ref_p, lr=0.05, momentum=0.9), alpha=0.5, k=5)
    for p in ref_p:
        p.grad = torch.zeros_like(p)
    ref.sync_lookahead()
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL


def test_lookahead_matches_pytorch_optimizer():
    Ref = reference("pytorch_optimizer", "Lookahead")
    ours_p, ref_p = make_params(), make_params()
    ours = Lookahead(torch.optim.AdamW(ours_p, lr=0.05), k=6, alpha=0.3)
    ref = Ref(torch.optim.AdamW(ref_p, lr=0.05), k=6, alpha=0.3)
    assert run_side_by_side(ours, ours_p, ref, ref_p) <= TOL
