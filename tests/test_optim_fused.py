"""Each optimizer's fast paths against its plain per-tensor path: the torch.compile path of all
four, and optbench's C kernels of LAMB, LARS, Lion and Sophia (float64 to 1e-12, float32 on threads)."""

from __future__ import annotations

import copy
import gc
import logging
import os
import re
import shutil
import subprocess
import weakref

import pytest
import torch

from optbench.optim import Lamb, Lars, Lion, SophiaG, lars, native
from optim_helpers import clone_params, make_params, run_side_by_side

OPTIMIZERS = {
    "lion": lambda params, fused: Lion(params, lr=1e-2, weight_decay=0.1, fused=fused),
    "lamb": lambda params, fused: Lamb(params, lr=1e-2, weight_decay=0.05, fused=fused),
    "lars": lambda params, fused: Lars(params, lr=0.5, weight_decay=1e-3, trust_coefficient=0.01, fused=fused),
    "sophia": lambda params, fused: SophiaG(params, lr=1e-2, weight_decay=0.1, fused=fused),
}


def side_by_side_with_plain(name: str) -> float:
    """The largest parameter difference between fused=None and fused=False over 50 steps."""
    plain_p = make_params()
    fused_p = clone_params(plain_p)
    plain = OPTIMIZERS[name](plain_p, False)
    fused = OPTIMIZERS[name](fused_p, None)
    if name == "sophia":  # a nonzero Hessian estimate, the same for both
        for opt, params in ((plain, plain_p), (fused, fused_p)):
            for p in params:
                opt._state(p)["hessian"].copy_(torch.linspace(0.0, 2.0, p.numel(), dtype=p.dtype).view_as(p))

    def change_lr(step: int) -> None:  # as a scheduler does: no recompilation, same numbers
        for opt in (plain, fused):
            for group in opt.param_groups:
                group["lr"] *= 0.97

    return run_side_by_side(fused, fused_p, plain, plain_p, steps=50, after_step=change_lr)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_matches_plain(name, monkeypatch):
    monkeypatch.setattr(native, "library", lambda: None)  # the four take torch.compile's path
    assert side_by_side_with_plain(name) <= 1e-12


@pytest.fixture
def kernels():
    """optbench's C kernels; a machine without a C compiler skips, one with a compiler must build them."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler ($CC or cc): the four take their torch.compile path")
    assert native.library() is not None, "a C compiler is here, but optbench's kernels did not build"


@pytest.mark.parametrize("name", ["lamb", "lars", "lion", "sophia"])
def test_c_kernel_matches_plain(name, kernels, monkeypatch):
    assert native.usable(None, [make_params()])
    ran, step = [], native.step
    monkeypatch.setattr(native, "step", lambda kernel, *a, **kw: (ran.append(kernel), step(kernel, *a, **kw)))
    assert side_by_side_with_plain(name) <= 1e-12
    assert f"{name}_step" in ran  # the C kernel stepped, not torch.compile's path


@pytest.mark.parametrize("name", ["lamb", "lars", "lion", "sophia"])
def test_c_kernel_float32_on_threads_and_channels_last(name, kernels):
    """Tensors large enough to be split across threads, a channels-last conv filter, a zero bias
    (trust ratio 1): float32 against the plain path, 20 steps."""
    gen = torch.Generator().manual_seed(0)
    made = [torch.randn(300, 1000, generator=gen),
            torch.randn(64, 32, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last),
            torch.zeros(1000)]
    fast_p = [t.clone().requires_grad_() for t in made]
    plain_p = [t.clone().requires_grad_() for t in made]
    fast, plain = OPTIMIZERS[name](fast_p, None), OPTIMIZERS[name](plain_p, False)
    for _ in range(20):
        grads = [torch.randn(t.shape, generator=gen) for t in made]
        grads[1] = grads[1].contiguous(memory_format=torch.channels_last)  # as autograd lays it out
        for params in (fast_p, plain_p):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        assert native.usable(None, [fast_p, [p.grad for p in fast_p]])
        version = fast_p[0]._version
        fast.step()
        plain.step()
        assert fast_p[0]._version > version  # autograd sees the in-place write
    for fast_t, plain_t in zip(fast_p, plain_p):
        torch.testing.assert_close(fast_t, plain_t, rtol=1e-5, atol=1e-5 * plain_t.abs().max().item())
    assert not torch.equal(fast_p[2], made[2])  # the zero bias moved


@pytest.mark.parametrize("name", ["lamb", "lars", "lion", "sophia"])
def test_c_kernel_treats_a_nan_gradient_as_the_plain_path_does(name, kernels):
    """LAMB and LARS: the NaN reaches the weights. Lion: torch.sign(NaN) is 0 on the CPU, so the
    weight holds and the momentum is NaN."""
    fast_p, plain_p = [torch.ones(100, 10, requires_grad=True) for _ in range(2)]
    fast, plain = OPTIMIZERS[name]([fast_p], None), OPTIMIZERS[name]([plain_p], False)
    grad = torch.randn(100, 10)
    grad[3, 4] = float("nan")
    for p, opt in ((fast_p, fast), (plain_p, plain)):
        p.grad = grad.clone()
        opt.step()
    assert torch.equal(fast_p.isnan(), plain_p.isnan())
    assert fast_p.isnan().any() == (name != "lion")
    for fast_state, plain_state in zip(fast.state[fast_p].values(), plain.state[plain_p].values()):
        assert torch.equal(fast_state.isnan(), plain_state.isnan())


def test_c_kernels_leave_what_they_cannot_step(kernels):
    matrix = torch.randn(4, 3)
    assert native.usable(None, [[matrix], [torch.randn(4, 3)]])
    assert not native.usable(False, [[matrix], [torch.randn(4, 3)]])  # fused=False: the plain path
    assert not native.usable(None, [[matrix.t()], [torch.randn(3, 4)]])  # a transposed view
    assert not native.usable(None, [[matrix], [torch.randn(3, 4).t()]])  # a gradient laid out otherwise
    assert not native.usable(None, [[matrix.half()], [torch.randn(4, 3).half()]])  # no float16 kernel
    assert not native.usable(None, [[matrix[:, :2]], [torch.randn(4, 2)]])  # strided, not dense


@pytest.mark.parametrize("name", ["lamb", "lars", "lion", "sophia"])
def test_what_changes_between_steps_is_checked_again(name, kernels):
    """A step keeps its packing to check the next step's parameters and state against it (only the
    gradients, new each step, are checked in full). A parameter moved to new storage (`p.data = ...`,
    as `Module.to` does), one laid out otherwise, and state replaced by `load_state_dict` are seen:
    the C kernel steps them again or the plain path takes over, equal to the plain path throughout."""
    fast_p, plain_p = make_params(), make_params()
    fast, plain = OPTIMIZERS[name](fast_p, None), OPTIMIZERS[name](plain_p, False)
    changes = {
        3: lambda: fast_p[0].data.__setitem__(slice(None), fast_p[0].data.clone()),  # in place: same storage
        5: lambda: setattr(fast_p[1], "data", fast_p[1].data.clone()),  # new storage
        7: lambda: setattr(fast_p[0], "data", fast_p[0].data.t().contiguous().t()),  # column-major: plain path
        9: lambda: setattr(fast_p[0], "data", fast_p[0].data.contiguous()),  # row-major again
        11: lambda: fast.load_state_dict(fused_state(plain)),  # new state tensors
    }
    ran, step = [], native.step

    def fused_state(optimizer: torch.optim.Optimizer) -> dict:
        state = copy.deepcopy(optimizer.state_dict())
        for group in state["param_groups"]:
            group["fused"] = None  # the plain optimizer's groups say False
        return state

    def after_step(number: int) -> None:
        if number in changes:
            changes[number]()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(native, "step", lambda kernel, *a, **kw: (ran.append(kernel), step(kernel, *a, **kw)))
        assert run_side_by_side(fast, fast_p, plain, plain_p, steps=14, after_step=after_step) <= 1e-12
    assert len(ran) == 12  # the kernel stepped but for the two column-major steps


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_lars_kept_weight_norms_equal_fresh_ones_to_the_bit(threads, kernels, monkeypatch):
    """LARS keeps the large weights' ‖w‖², summed as its kernel writes them, for the next step. A run
    that sums every ‖w‖ afresh at every step ends with the same weights to the last bit, on one thread,
    two, and three (more than this machine's cores: an OpenMP reduction would add the threads' sums in
    the order they finish), so that a resumed run, which sums them afresh once, equals one never
    stopped. In float64: a float32 step would round most differences in a norm away."""
    gen = torch.Generator().manual_seed(0)
    made = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((300, 1000), (70_000,), (100,))]
    kept_p, fresh_p = [t.clone().requires_grad_() for t in made], [t.clone().requires_grad_() for t in made]
    kept, fresh = (Lars(params, lr=0.5, weight_decay=1e-3, trust_coefficient=0.01) for params in (kept_p, fresh_p))
    given, true, step = [], [], native.step  # the norms the kernel is given, and the weights' own

    def spy(kernel, packed, **kw):
        given.append(list(kw["weight_squares"]))
        true.append([w.double().square().sum().item() for w in packed.tensors[0]])
        return step(kernel, packed, **kw)

    monkeypatch.setattr(native, "step", spy)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # what the kernels split by
    for _ in range(10):
        grads = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in made]
        for params in (kept_p, fresh_p):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        kept.step()
        fresh.forget_weight_norms()
        fresh.step()
    assert all(torch.equal(a, b) for a, b in zip(kept_p, fresh_p))
    assert given[0] == given[1] == [-1.0] * 3  # the first step sums them all, and every fresh step
    for squares, weights in zip(given[2::2], true[2::2]):  # the kept run's later steps: the large weights' known
        assert squares[2] == -1.0  # a small one is summed afresh
        assert squares[:2] == pytest.approx(weights[:2], rel=1e-5)
    assert all(squares == [-1.0] * 3 for squares in given[1::2])


def test_lars_sums_a_changed_weight_afresh(kernels, monkeypatch):
    """A kept ‖w‖ is used only for a weight that the last step left as it is. One changed in place by
    an op autograd sees (`mul_` under no_grad, `copy_` as `load_state_dict` does) is summed again, and so
    is every weight after `forget_weight_norms()`, which a write through `.data` needs: the kernel stays
    equal to the plain path. Without it, a `.data` write goes unseen (the limit LARS's docstring names)."""
    monkeypatch.setattr(lars, "KEEP_NORM_MIN", 0)  # every weight keeps its norm

    def run(forget_after_data_write: bool) -> float:
        fast_p, plain_p = make_params(), make_params()
        fast, plain = OPTIMIZERS["lars"](fast_p, None), OPTIMIZERS["lars"](plain_p, False)

        def change(number: int) -> None:
            with torch.no_grad():
                for p in (fast_p[0], plain_p[0]):
                    if number == 2:
                        p.mul_(0.5)
                    elif number == 4:
                        p.copy_(torch.ones_like(p))
                    elif number == 6:
                        p.data.mul_(3.0)
            if number == 6 and forget_after_data_write:
                fast.forget_weight_norms()

        return run_side_by_side(fast, fast_p, plain, plain_p, steps=10, after_step=change)

    assert run(forget_after_data_write=True) <= 1e-12
    assert run(forget_after_data_write=False) > 1e-6


def test_the_packing_kept_between_steps_holds_no_gradient(kernels):
    """The gradients of a step are freed when the model's are (`zero_grad`): the packing kept for the
    next step's checks would otherwise hold a model's worth of memory."""
    params = make_params()
    optimizer = Lion(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    gone = [weakref.ref(p.grad) for p in params]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    assert all(ref() is None for ref in gone)
    assert optimizer._packed  # and a packing is kept


def test_c_kernels_fall_back_without_a_compiler(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("OPTBENCH_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="optbench"):
            assert native.library() is None
            assert not native.usable(None, [make_params()])
            assert side_by_side_with_plain("lars") <= 1e-12  # torch.compile's path steps instead
    finally:
        native.library.cache_clear()  # the next test builds with the real compiler again
    assert "C kernels for LAMB, LARS, Lion and SophiaG could not be built" in caplog.text
    assert not list((tmp_path / "cache").glob("*.so"))


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


def test_every_element_loop_of_the_c_kernels_vectorises(tmp_path):
    """GCC's vectoriser report on the kernels as native.py builds them: a loop over elements left
    scalar is a step several times slower (SophiaG's was 9x fused AdamW's on an AVX2 CPU, left with a
    branch per element). An element loop written with FOR_EACH_ELEMENT or SUM_IN_BLOCKS (two versions
    each: split across threads or not, for two element types) must be reported vectorised four times
    or more; one written out in a function (LARS's), twice, once per element type (GCC names the
    loop's line, its pragma's or its body's), but for the few elements left after LARS's quarters; and
    a loop left scalar for control flow must be a loop over tensors or LARS's quarters."""
    compiler = native.compiler()
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler {compiler!r} here")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:
        pytest.skip(f"{compiler} is not GCC, whose -fopt-info report this test reads")
    report = subprocess.run([compiler, *native.FLAGS, "-fopt-info-vec-all", "-x", "c", "-", "-o",
                             str(tmp_path / "kernels.so")], input=native.source(), capture_output=True,
                            text=True, check=True).stderr
    lines = [line.strip() for line in (native.HERE / "kernels_step.h").read_text().splitlines()]
    macro_loops = [n for n, line in enumerate(lines, 1) if line.startswith(("FOR_EACH_ELEMENT(", "SUM_IN_BLOCKS("))]
    function_loops = [n for n, line in enumerate(lines, 1)
                      if line.startswith("for (int64_t i") and not line.endswith("/* the last 0-3 elements */")]
    # LAMB's two passes, Lion's, SophiaG's; LARS's sums of squares and its update
    assert (len(macro_loops), len(function_loops)) == (4, 2)
    vectorised = [int(n) for n in re.findall(r"kernels_step\.h:(\d+):\d+: optimized: loop vectorized", report)]
    for number in macro_loops:
        assert vectorised.count(number) >= 4, f"kernels_step.h:{number} is not vectorised: {lines[number - 1]}"
    for number in function_loops:
        assert sum(vectorised.count(n) for n in (number - 1, number, number + 1)) >= 2, \
            f"kernels_step.h:{number} is not vectorised: {lines[number - 1]}"
    for number in set(re.findall(r"kernels_step\.h:(\d+):\d+: missed: not vectorized: control flow", report)):
        assert lines[int(number) - 1].startswith(("for (int64_t k = 0;", "for (int r = 0; r < 4;")), \
            f"kernels_step.h:{number} is left scalar: {lines[int(number) - 1]}"


def test_the_compiled_path_gets_every_float_in_one_copy_to_the_device():
    """Floats (the LR, β) and lists of floats (LAMB's per-tensor bias corrections) reach a compiled
    update as 0-dim float64 tensors made in one host-to-device copy (from pinned memory on CUDA,
    without waiting): one tensor per float on a GPU would wait for the device's queue each."""
    from optbench.optim.base import _floats_as_tensors

    params = [torch.zeros(3)]
    args, kwargs = _floats_as_tensors((params, [0.9, 0.81]), {"lr": 0.1, "steps": 3, "name": "x"},
                                      torch.device("cpu"))
    assert args[0] is params and kwargs["steps"] == 3 and kwargs["name"] == "x"
    scalars = [*args[1], kwargs["lr"]]
    assert [s.item() for s in scalars] == [0.9, 0.81, 0.1]
    assert all(s.dim() == 0 and s.dtype == torch.float64 for s in scalars)
    assert len({s.untyped_storage().data_ptr() for s in scalars}) == 1  # one tensor, one copy
