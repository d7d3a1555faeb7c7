"""optbench's C kernels for LAMB, LARS, Lion and SophiaG on the CPU (kernels.c), compiled on first use.

LAMB's and LARS's trust ratios need each tensor's norms before its step can be applied, so their
step is two passes over each tensor. Built from torch's ops it takes one pass per op, and
torch.compile's reductions run at half the speed of its element-wise loops on the CPU (measured
with `optbench bench`: LAMB at 4.1x fused AdamW's step, LARS at 2.2x fused SGD's). kernels.c does
each pass as one vectorised loop. Lion's one pass is 10% faster there than torch.compile's; Sophia's
one pass saves torch.compile's compiling a graph as large as the parameter list (minutes for
thousands of tensors).

The source is compiled once per machine with the C compiler (`$CC`, else `cc`) and OpenMP into
optbench's cache folder (`$OPTBENCH_CACHE`, else `$XDG_CACHE_HOME/optbench`, else
`~/.cache/optbench`), then loaded with ctypes. The kernels share torch's OpenMP runtime and
thread count. Where building fails (no compiler, no OpenMP) a warning says so once and the
optimizers take their torch.compile or plain path, against which the kernels are tested.

Each kernel's argument list is written once, in KERNELS. From it come the C prototypes compiled
ahead of kernels.c, so that a C definition that differs from it fails to build (and the
optimizers take their other path), and the ctypes argument types. Tensors reach a kernel only
through `usable`, which checks and packs them; `step` checks every other argument against KERNELS
and raises TypeError or ValueError on a mismatch, never passing C a pointer it cannot use.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter, is_
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

log = logging.getLogger("optbench")

HERE = Path(__file__).parent
SOURCES = ("kernels.c", "kernels_step.h")
# -fno-trapping-math: no kernel relies on floating-point traps, and without it GCC keeps selects as
# branches (kernels_step.h's SophiaG). -Werror=missing-prototypes: a kernel defined in C but missing
# from KERNELS fails the build too.
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Werror=missing-prototypes",
         "-shared", "-fPIC")
DTYPES = {torch.float32: ("float32", "float"), torch.float64: ("float64", "double")}  # suffix, C type
PLAIN_TYPES = (Tensor, torch.nn.Parameter)


class Kind(NamedTuple):
    """What one kernel argument is: its C type (`real` being the element type) and ctypes type."""
    c_type: str
    ctype: type


COUNT = Kind("int64_t", ctypes.c_int64)  # how many tensors were packed
TENSORS = Kind("real *const *", ctypes.c_void_p)  # one packed tensor list, written through
INPUTS = Kind("const real *const *", ctypes.c_void_p)  # one packed tensor list, read only
SIZES = Kind("const int64_t *", ctypes.c_void_p)  # the packed tensors' element counts
PER_TENSOR = Kind("const double *", ctypes.c_void_p)  # given: a number for each tensor
PER_TENSOR_OUT = Kind("double *", ctypes.c_void_p)  # given: an array("d") of a number for each tensor, rewritten
SCRATCH = Kind("real *", ctypes.c_void_p)  # given: a contiguous buffer as large as the largest tensor
NUMBER = Kind("double", ctypes.c_double)  # given: a hyperparameter
THREADS = Kind("int", ctypes.c_int)  # torch's thread count

# Each kernel's arguments in order, as kernels_step.h defines them for each element type.
KERNELS: dict[str, tuple[tuple[str, Kind], ...]] = {
    "lamb_step": (("count", COUNT), ("params", TENSORS), ("grads", INPUTS), ("exp_avgs", TENSORS),
                  ("exp_avg_sqs", TENSORS), ("sizes", SIZES), ("bias_corrections1", PER_TENSOR),
                  ("bias_corrections2", PER_TENSOR), ("scratch", SCRATCH), ("lr", NUMBER), ("beta1", NUMBER),
                  ("beta2", NUMBER), ("eps", NUMBER), ("weight_decay", NUMBER), ("threads", THREADS)),
    "lars_step": (("count", COUNT), ("params", TENSORS), ("grads", INPUTS), ("momentum_buffers", TENSORS),
                  ("sizes", SIZES), ("weight_squares", PER_TENSOR_OUT), ("lr", NUMBER), ("momentum", NUMBER),
                  ("weight_decay", NUMBER), ("trust_coefficient", NUMBER), ("eps", NUMBER), ("threads", THREADS)),
    "sophia_step": (("count", COUNT), ("params", TENSORS), ("grads", INPUTS), ("exp_avgs", TENSORS),
                    ("hessians", INPUTS), ("sizes", SIZES), ("lr", NUMBER), ("beta1", NUMBER), ("rho", NUMBER),
                    ("weight_decay", NUMBER), ("eps", NUMBER), ("threads", THREADS)),
    "lion_step": (("count", COUNT), ("params", TENSORS), ("grads", INPUTS), ("exp_avgs", TENSORS),
                  ("sizes", SIZES), ("lr", NUMBER), ("beta1", NUMBER), ("beta2", NUMBER),
                  ("weight_decay", NUMBER), ("threads", THREADS)),
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
        for name, arguments in KERNELS.items():
            for suffix, _ in DTYPES.values():
                function = getattr(lib, f"{name}_{suffix}")  # AttributeError: declared, never defined
                function.argtypes, function.restype = [kind.ctype for _, kind in arguments], None
    except (OSError, AttributeError, subprocess.SubprocessError) as e:
        reason = (getattr(e, "stderr", None) or str(e)).strip()
        log.warning("optbench's C kernels for LAMB, LARS, Lion and SophiaG could not be built (%s); they take their "
                    "torch.compile or plain path", _first_error(reason) or e)
        return None
    return lib


def _first_error(compiler_output: str) -> str:
    """The line that says what failed: the compiler's first error, else the first line."""
    lines = compiler_output.splitlines()
    return next((line for line in lines if "error" in line), lines[0] if lines else "")


def prototypes() -> str:
    """C declarations of every kernel in KERNELS for each element type."""
    lines = ["#include <stdint.h>"]
    for suffix, real in DTYPES.values():
        for name, arguments in KERNELS.items():
            typed = ", ".join(f"{kind.c_type.replace('real', real)} {arg}" for arg, kind in arguments)
            lines.append(f"void {name}_{suffix}({typed});")
    return "\n".join(lines) + "\n"


def compiler() -> str:
    return os.environ.get("CC", "cc")


def source() -> str:
    """What the compiler reads: kernels.c after the prototypes, so that it rejects a definition whose
    types differ from them. kernels.c by its full path: from standard input, a quoted include looks in
    the working folder first."""
    return f'{prototypes()}#include "{HERE / "kernels.c"}"\n'


def _build() -> Path:
    """The shared library for this source, compiler and CPU, compiled unless already cached."""
    key = hashlib.sha256(b"\0".join([prototypes().encode(), *(HERE.joinpath(s).read_bytes() for s in SOURCES),
                                     compiler().encode(), " ".join(FLAGS).encode(), _cpu()]))
    target = cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
        log.info("compiling optbench's C kernels for LAMB, LARS, Lion and SophiaG (once: cached in %s)", target.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        subprocess.run([compiler(), *FLAGS, "-x", "c", "-", "-o", str(partial)], input=source(),
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


@dataclass(slots=True)  # not frozen: that makes it 4x as slow to create, a cost on every step
class Packed:
    """Tensor lists that `usable` checked for the kernels, each with an array of its tensors' data
    pointers, and the parameters' (the first list's) element counts, shapes and strides. It holds the
    tensors, so that the pointers stay valid while it lives."""
    tensors: list[list[Tensor]]
    dtype: torch.dtype
    pointers: list[array]
    sizes: array
    largest: int
    shapes: list[torch.Size]
    strides: list[tuple[int, ...]]

    def without_gradients(self) -> Packed:
        """What the next step's `usable` may take as `known`: this packing less the gradients (the
        second list), which must not be kept alive past their step (a model's worth of memory)."""
        tensors, pointers = list(self.tensors), list(self.pointers)
        tensors[1], pointers[1] = [], array("Q")
        return Packed(tensors, self.dtype, pointers, self.sizes, self.largest, self.shapes, self.strides)


def usable(fused: bool | None, tensor_lists: Sequence[Sequence[Tensor]], known: Packed | None = None) -> Packed | None:
    """The tensors packed for a kernel (the lists in its KERNELS order: the parameters, the gradients,
    then the state), or None where the kernels cannot step them: `fused` is False, they are not dense
    CPU tensors of one dtype the kernels have, each shaped and laid out like its parameter, or the
    kernels do not build here. Lists of different lengths raise ValueError.

    `known`: the same group's packing at its last step (`Packed.without_gradients`). A list that holds
    the same tensor objects at the same addresses as there is not checked again: the parameters and
    the state, step after step. With thousands of small tensors the checks, a few attribute reads
    per tensor in Python, cost more than the kernel (2,000 vectors of 64: 5 ms, the kernel 0.05 ms)."""
    params, *others = tensor_lists
    dtype = params[0].dtype
    if fused is False or dtype not in DTYPES:
        return None
    if known is not None and known.dtype != dtype:
        known = None
    if (addresses := _known_addresses(params, known, 0)) is not None:
        sizes, largest, shapes, strides = known.sizes, known.largest, known.shapes, known.strides
    else:
        known = None  # the parameters moved: their layouts may have changed, every list is checked
        # exact types: a tensor subclass (a DTensor shard under FSDP) has no plain data pointer
        if not _plain_cpu(params, dtype) or not all(map(_dense, params)):
            return None
        sizes = array("q", map(Tensor.numel, params))
        largest = max(sizes)
        shapes, strides = list(map(_SHAPE, params)), list(map(Tensor.stride, params))
        # arrays, not ctypes arrays, which take 10x as long to fill; "Q": torch's platforms have 64-bit pointers
        addresses = array("Q", map(Tensor.data_ptr, params))
    pointers = [addresses]
    for index, tensors in enumerate(others, start=1):
        if len(tensors) != len(params):
            raise ValueError(f"tensor lists of {len(params)} and {len(tensors)} tensors: one each per parameter")
        if (addresses := _known_addresses(tensors, known, index)) is None:
            # the shape and strides of a dense parameter: dense too, with as many elements
            if not (_plain_cpu(tensors, dtype) and list(map(Tensor.stride, tensors)) == strides
                    and list(map(_SHAPE, tensors)) == shapes):
                return None
            addresses = array("Q", map(Tensor.data_ptr, tensors))
        pointers.append(addresses)
    if library() is None:
        return None
    return Packed([list(tensors) for tensors in tensor_lists], dtype, pointers, sizes, largest, shapes, strides)


_SHAPE, _IS_CPU, _DTYPE = attrgetter("shape"), attrgetter("is_cpu"), attrgetter("dtype")
_PLAIN_TYPES = frozenset(PLAIN_TYPES)


def _plain_cpu(tensors: Sequence[Tensor], dtype: torch.dtype) -> bool:
    """Every one a plain (not a subclass) CPU tensor of `dtype`; in C-level loops (map), not Python's."""
    return (set(map(type, tensors)) <= _PLAIN_TYPES and all(map(_IS_CPU, tensors))
            and set(map(_DTYPE, tensors)) == {dtype})


def _known_addresses(tensors: Sequence[Tensor], known: Packed | None, index: int) -> array | None:
    """The tensors' addresses where they are the objects of list `index` of `known` at its addresses
    (a tensor's storage can be swapped under it: `p.data = ...`, as `Module.to` does); else None."""
    if known is None:
        return None
    old = known.tensors[index]
    if len(old) != len(tensors) or not all(map(is_, tensors, old)):
        return None
    addresses = array("Q", map(Tensor.data_ptr, tensors))
    return addresses if addresses == known.pointers[index] else None


def _dense(t: Tensor) -> bool:
    """Elements packed without gaps, in either layout optbench's models use."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def step(kernel: str, packed: Packed, **given: Any) -> None:
    """Run `kernel` in place on the tensors `usable` packed, with its other arguments in KERNELS by
    name. Each is checked against KERNELS first: a mismatch raises TypeError or ValueError."""
    if not isinstance(packed, Packed):
        raise TypeError(f"{kernel}: its tensors must be packed by native.usable, not a {type(packed).__name__}")
    lists, wanted = _parts(kernel)
    if len(packed.pointers) != len(lists):
        raise TypeError(f"{kernel}: takes {len(lists)} tensor lists ({', '.join(lists)}), "
                        f"{len(packed.pointers)} were packed")
    if given.keys() != wanted.keys():
        raise TypeError(f"{kernel}: takes {', '.join(wanted)}; given {', '.join(given)}")
    count, pointers, values = len(packed.sizes), iter(packed.pointers), []
    for name, kind in KERNELS[kernel]:
        if kind is COUNT:
            values.append(count)
        elif kind is TENSORS or kind is INPUTS:
            values.append(next(pointers))
        elif kind is SIZES:
            values.append(packed.sizes)
        elif kind is PER_TENSOR:
            if len(given[name]) != count:
                raise ValueError(f"{kernel}: {name} has {len(given[name])} numbers for {count} tensors")
            values.append(array("d", given[name]))
        elif kind is PER_TENSOR_OUT:
            numbers = given[name]
            if type(numbers) is not array or numbers.typecode != "d" or len(numbers) != count:
                raise ValueError(f"{kernel}: {name} must be an array('d') of {count} numbers, one per tensor")
            values.append(numbers)  # written through: the caller reads the kernel's numbers in it
        elif kind is SCRATCH:
            values.append(_scratch(kernel, name, given[name], packed))
        elif kind is NUMBER:
            values.append(float(given[name]))
        elif kind is THREADS:
            values.append(torch.get_num_threads())
    # `values` keeps the arrays alive through the call; ctypes raises TypeError on a missing value
    function = getattr(library(), f"{kernel}_{DTYPES[packed.dtype][0]}")
    function(*(v.buffer_info()[0] if type(v) is array else v for v in values))
    torch.autograd.graph.increment_version(packed.tensors[0])


@functools.cache
def _parts(kernel: str) -> tuple[list[str], dict[str, None]]:
    """The tensor lists `kernel` takes, and the arguments its callers give (by name), in order."""
    arguments = KERNELS[kernel]
    return ([name for name, kind in arguments if kind is TENSORS or kind is INPUTS],
            dict.fromkeys(name for name, kind in arguments if kind in (PER_TENSOR, PER_TENSOR_OUT, SCRATCH, NUMBER)))


def _scratch(kernel: str, name: str, buffer: Tensor, packed: Packed) -> int:
    """The address of a buffer the kernel writes any one packed tensor's worth of elements through."""
    if not (type(buffer) in PLAIN_TYPES and buffer.is_cpu and buffer.dtype == packed.dtype
            and buffer.is_contiguous() and buffer.numel() >= packed.largest):
        raise ValueError(f"{kernel}: {name} must be a contiguous CPU tensor of {packed.dtype} with at least "
                         f"{packed.largest} elements")
    return buffer.data_ptr()
