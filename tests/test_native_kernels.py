"""optbench's C kernels (optbench.optim.native) against their one argument definition, KERNELS: a
C definition unlike it is refused at build time and the optimizers step on their other path; a
call unlike it raises before C sees a pointer. Their numbers: tests/test_optim_fused.py."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from optbench.optim import Lion, native
from optim_helpers import make_params, run_side_by_side

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="no C compiler ($CC or cc): the kernels are never built here")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """The kernels built anew into an empty cache folder, and built as usual again afterwards."""
    monkeypatch.setenv("OPTBENCH_CACHE", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path
    native.library.cache_clear()


def with_kind(kernel: str, argument: str, kind: native.Kind) -> tuple[tuple[str, native.Kind], ...]:
    return tuple((name, kind if name == argument else old) for name, old in native.KERNELS[kernel])


# KERNELS edited, the C left alone: the edit, and what the compiler or the loader says about it
MISMATCHES = {
    "a double taken as an int": (lambda k: k.update(lion_step=with_kind("lion_step", "beta2", native.THREADS)),
                                 "conflicting types for", "lion_step_float32"),
    "an argument left out": (lambda k: k.update(lars_step=k["lars_step"][:-1]),
                             "conflicting types for", "lars_step_float32"),
    "a read-only list taken as written": (
        lambda k: k.update(lamb_step=with_kind("lamb_step", "grads", native.TENSORS)),
        "conflicting types for", "lamb_step_float32"),
    "a kernel C defines, left out": (lambda k: k.pop("lion_step"), "no previous prototype for", "lion_step_float32"),
    "a kernel C does not define": (lambda k: k.update(adam_step=k["lion_step"]), "undefined symbol", "adam_step_float32"),
}


@pytest.mark.parametrize("mismatch", list(MISMATCHES))
def test_a_kernel_unlike_its_definition_is_refused_and_the_optimizers_step_plain(mismatch, fresh_build,
                                                                                 monkeypatch, caplog):
    edit, error, kernel = MISMATCHES[mismatch]
    kernels = dict(native.KERNELS)
    edit(kernels)
    monkeypatch.setattr(native, "KERNELS", kernels)
    with caplog.at_level(logging.WARNING, logger="optbench"):
        assert native.library() is None
        assert native.usable(None, [make_params()]) is None
        plain_p, ours_p = make_params(), make_params()
        worst = run_side_by_side(Lion(ours_p, lr=1e-2, weight_decay=0.1), ours_p,
                                 Lion(plain_p, lr=1e-2, weight_decay=0.1, fused=False), plain_p, steps=5)
    assert worst <= 1e-12  # Lion took its torch.compile path
    assert "C kernels for LAMB, LARS, Lion and SophiaG could not be built" in caplog.text
    assert error in caplog.text and kernel in caplog.text  # the line that says why


def test_the_build_takes_optbench_s_kernels_c_wherever_it_runs(fresh_build, monkeypatch):
    """The source reaches the compiler on standard input, where a quoted include would find a
    kernels.c in the working folder first."""
    (fresh_build / "kernels.c").write_text("#error not optbench's\n")
    monkeypatch.chdir(fresh_build)
    assert native.library() is not None


def test_the_c_prototypes_and_the_ctypes_types_come_from_kernels():
    lib = native.library()
    prototypes = native.prototypes().splitlines()
    for name, arguments in native.KERNELS.items():
        for suffix, _ in native.DTYPES.values():
            (prototype,) = [line for line in prototypes if line.startswith(f"void {name}_{suffix}(")]
            assert prototype.count(",") == len(arguments) - 1
            assert getattr(lib, f"{name}_{suffix}").argtypes == [kind.ctype for _, kind in arguments]


def packed(lists: int) -> tuple[list[torch.Tensor], native.Packed]:
    """make_params' tensors, with lists - 1 lists of tensors like them (zeros), packed."""
    params = [p.detach() for p in make_params()]
    tensors = native.usable(None, [params, *([torch.zeros_like(p) for p in params] for _ in range(lists - 1))])
    assert tensors is not None
    return params, tensors


LION = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1)


def test_step_checks_each_argument_against_kernels():
    params, tensors = packed(3)
    before = [p.clone() for p in params]
    with pytest.raises(TypeError, match="packed by native.usable"):  # bare tensor lists: never pointers
        native.step("lion_step", [params, params, params], **LION)
    with pytest.raises(TypeError, match=r"takes 4 tensor lists \(params, grads, exp_avgs, exp_avg_sqs\), 3 were"):
        native.step("lamb_step", tensors, bias_corrections1=[1.0] * 3, bias_corrections2=[1.0] * 3,
                    scratch=torch.empty(30, dtype=torch.float64), lr=1.0, beta1=0.9, beta2=0.9, eps=1e-8,
                    weight_decay=0.0)
    with pytest.raises(TypeError, match="takes lr, beta1, beta2, weight_decay; given lr, beta1, beta2$"):
        native.step("lion_step", tensors, lr=1e-2, beta1=0.9, beta2=0.99)
    with pytest.raises(TypeError, match="takes lr, beta1, beta2, weight_decay; given .*, eps"):
        native.step("lion_step", tensors, **LION, eps=1e-8)
    with pytest.raises(ValueError, match="could not convert"):
        native.step("lion_step", tensors, **{**LION, "lr": "fast"})
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # no call reached C
    native.step("lion_step", tensors, **LION)
    assert not torch.equal(params[0], before[0])


@pytest.mark.parametrize("problem", ["too few numbers", "float32 scratch", "strided scratch", "small scratch"])
def test_lamb_step_checks_its_numbers_and_scratch(problem):
    params, tensors = packed(4)
    largest = max(p.numel() for p in params)
    given = dict(bias_corrections1=[0.1] * 3, bias_corrections2=[0.01] * 3,
                 scratch=torch.empty(largest, dtype=torch.float64), lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                 weight_decay=0.0)
    native.step("lamb_step", tensors, **given)  # as given, it runs
    given.update({"too few numbers": {"bias_corrections2": [0.01] * 2},
                  "float32 scratch": {"scratch": torch.empty(largest)},
                  "strided scratch": {"scratch": torch.empty(2 * largest, dtype=torch.float64)[::2]},
                  "small scratch": {"scratch": torch.empty(largest - 1, dtype=torch.float64)}}[problem])
    with pytest.raises(ValueError, match="bias_corrections2 has 2 numbers for 3 tensors|scratch must be"):
        native.step("lamb_step", tensors, **given)


def test_tensors_the_kernels_cannot_take_are_never_packed():
    """What would make C read or write past a tensor, or step it wrongly, makes `usable` say no;
    lists of different lengths are a caller's mistake and raise."""
    four, two = torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    assert native.usable(None, [[four], [four.clone()]]) is not None
    assert native.usable(None, [[four], [two]]) is None  # the same strides, fewer elements
    column = torch.zeros(4, 1, dtype=torch.float64)
    row_alike = torch.empty_strided((1, 4), column.stride(), dtype=torch.float64)  # its strides, another shape
    assert native.usable(None, [[column], [row_alike]]) is None
    assert native.usable(None, [[four], [four.float()]]) is None  # another dtype
    assert native.usable(None, [[four], [torch.zeros(8, dtype=torch.float64)[::2]]]) is None  # not dense
    with pytest.raises(ValueError, match="tensor lists of 2 and 1 tensors"):
        native.usable(None, [[four, four.clone()], [four.clone()]])
