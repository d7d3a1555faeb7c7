"""optbench's C kernels for LAMB, LARS and Lion on the CPU (kernels.c), compiled on first use.

LAMB's and LARS's trust ratios need each tensor's norms before its step can be applied, so their
step is two passes over each tensor. Built from torch's ops it takes one pass per op, and
torch.compile's reductions run at half the speed of its element-wise loops on the CPU (measured
with `optbench bench`: LAMB at 4.1x fused AdamW's step, LARS at 2.2x fused SGD's). kernels.c does
each pass as one vectorised loop. Lion's one pass is 10% faster there than torch.compile's.

The source is compiled once per machine with the C compiler (`$CC`, else `cc`) and OpenMP into
optbench's cache folder (`$OPTBENCH_CACHE`, else `$XDG_CACHE_HOME/optbench`, else
`~/.cache/optbench`), then loaded with ctypes. The kernels share torch's OpenMP runtime and
thread count. Where building fails (no compiler, no OpenMP) a warning says so once and the
optimizers take their torch.compile or plain path, against which the kernels are tested.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("optbench")

HERE = Path(__file__).parent
SOURCES = ("kernels.c", "kernels_step.h")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC")
DTYPES = {torch.float32: "float32", torch.float64: "float64"}
PLAIN_TYPES = (Tensor, torch.nn.Parameter)

_P, _I64, _F64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
SIGNATURES = {
    # count, params, grads, exp_avgs, exp_avg_sqs, sizes, bias corrections 1 and 2, scratch,
    # lr, beta1, beta2, eps, weight_decay, threads
    "lamb_step": [_I64, _P, _P, _P, _P, _P, _P, _P, _P, _F64, _F64, _F64, _F64, _F64, _INT],
    # count, params, grads, momentum_buffers, sizes, lr, momentum, weight_decay,
    # trust_coefficient, eps, threads
    "lars_step": [_I64, _P, _P, _P, _P, _F64, _F64, _F64, _F64, _F64, _INT],
    # count, params, grads, exp_avgs, sizes, lr, beta1, beta2, weight_decay, threads
    "lion_step": [_I64, _P, _P, _P, _P, _F64, _F64, _F64, _F64, _INT],
}


def cache_dir() -> Path:
    if os.environ.get("OPTBENCH_CACHE"):
        return Path(os.environ["OPTBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optbench"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with a warning, once) where they cannot be built here."""
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as e:
        reason = getattr(e, "stderr", None) or str(e)
        log.warning("optbench's C kernels for LAMB, LARS and Lion could not be built (%s); they take their "
                    "torch.compile or plain path", reason.strip().splitlines()[0] if reason.strip() else e)
        return None
    for name, argtypes in SIGNATURES.items():
        for dtype in DTYPES.values():
            function = getattr(lib, f"{name}_{dtype}")
            function.argtypes, function.restype = argtypes, None
    return lib


def _build() -> Path:
    """The shared library for this source, compiler and CPU, compiled unless already cached."""
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(b"\0".join([*(HERE.joinpath(s).read_bytes() for s in SOURCES),
                                     compiler.encode(), " ".join(FLAGS).encode(), _cpu()]))
    target = cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        subprocess.run([compiler, *FLAGS, str(HERE / "kernels.c"), "-o", str(partial)],
                       check=True, capture_output=True, text=True, timeout=300)
        partial.replace(target)  # atomic: another process sees no library or a whole one
    return target


def _cpu() -> bytes:
    """What `-march=native` compiles for. A home folder shared by machines with different CPUs
    must not hand one of them a library with instructions it lacks."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    features = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {platform.processor()} {features}".encode()


def usable(fused: bool | None, tensor_lists: Sequence[Sequence[Tensor]]) -> bool:
    """Whether the kernels can step these tensors: `fused` is not False, they are dense CPU
    tensors of one dtype the kernels have, each laid out like its parameter (the first list), and
    the kernels build here."""
    params = tensor_lists[0]
    dtype = params[0].dtype
    if fused is False or dtype not in DTYPES or not all(_dense(p) for p in params):
        return False
    strides = [p.stride() for p in params]
    for tensors in tensor_lists:
        for t, stride in zip(tensors, strides, strict=True):
            # exact types: a tensor subclass (a DTensor shard under FSDP) has no plain data pointer
            if type(t) not in PLAIN_TYPES or not t.is_cpu or t.dtype != dtype or t.stride() != stride:
                return False
    return library() is not None


def _dense(t: Tensor) -> bool:
    """Elements packed without gaps, in either layout optbench's models use."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def lamb_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
              bias_corrections1: list[float], bias_corrections2: list[float], scratch: Tensor, *,
              lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """One LAMB step in place (see kernels_step.h); `usable` must have said yes. `scratch`: a
    contiguous buffer of the parameters' dtype with room for the largest one."""
    if not (scratch.is_contiguous() and scratch.dtype == params[0].dtype
            and scratch.numel() >= max(p.numel() for p in params)):  # the kernel writes through it
        raise ValueError("lamb_step: scratch must be contiguous, of the parameters' dtype, and as large as the largest")
    _function("lamb_step", params)(
        len(params), _pointers(params), _pointers(grads), _pointers(exp_avgs), _pointers(exp_avg_sqs),
        _sizes(params), _doubles(bias_corrections1), _doubles(bias_corrections2), scratch.data_ptr(),
        lr, beta1, beta2, eps, weight_decay, torch.get_num_threads())
    torch.autograd.graph.increment_version(params)


def lars_step(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], *,
              lr: float, momentum: float, weight_decay: float, trust_coefficient: float, eps: float) -> None:
    """One LARS step in place (see kernels_step.h); `usable` must have said yes."""
    _function("lars_step", params)(
        len(params), _pointers(params), _pointers(grads), _pointers(momentum_buffers), _sizes(params),
        lr, momentum, weight_decay, trust_coefficient, eps, torch.get_num_threads())
    torch.autograd.graph.increment_version(params)


def lion_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], *,
              lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    """One Lion step in place (see kernels_step.h); `usable` must have said yes."""
    _function("lion_step", params)(
        len(params), _pointers(params), _pointers(grads), _pointers(exp_avgs), _sizes(params),
        lr, beta1, beta2, weight_decay, torch.get_num_threads())
    torch.autograd.graph.increment_version(params)


def _function(name: str, params: list[Tensor]) -> ctypes._CFuncPtr:
    return getattr(library(), f"{name}_{DTYPES[params[0].dtype]}")


def _pointers(tensors: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _sizes(tensors: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_int64 * len(tensors))(*(t.numel() for t in tensors))


def _doubles(values: list[float]) -> ctypes.Array:
    return (ctypes.c_double * len(values))(*values)
