"""`optbench bench`: optimizer step time and optimizer-state memory, side by side.

Every chosen optimizer config steps its own copy of one fixed parameter set with fixed gradients
(shared), as in training, where no other optimizer changes the weights between its steps; shaped by
`shape`: by default blocks of a `width` x `width` matrix and three `width`-vectors (a linear layer
with a norm, about `params` parameters in all); or the tensors of a real model (ResNet-50's,
ViT-B/16's, read from torchvision's models built on the meta device), a few huge matrices, or many
tiny vectors, since an optimizer's per-tensor costs and its memory passes weigh differently in
each. torch's fused AdamW and fused SGD with momentum run beside them as baselines, and so does the
same optimizer from timm, pytorch-optimizer and lion-pytorch where they are installed. Steps are
timed round-robin (one step of each, `repeats` times) so that a busy machine slows all of them
alike; `warmup` steps before, compilation included, are not timed. Reported: the minimum and
median step times, their ratios to the baselines, and state bytes per parameter; under the table,
every optimizer left out and why, and what 8-bit state costs in step time here.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench.commands.common import reports_bad_input, writable_folder
from optbench.errors import ConfigError

USAGE = """usage: optbench bench [optimizers=NAME,...] [shape=PRESET] [params=N] [width=N] [repeats=N]
                      [warmup=N] [threads=N] [--csv PATH | --out DIR]

Step time (minimum and median of `repeats` timed steps, after `warmup` untimed ones) and optimizer-state
bytes per parameter of each optimizer config (default: all of configs/optimizer/ but muon), beside torch's
fused AdamW and fused SGD-momentum and the same optimizer from timm / pytorch-optimizer /
lion-pytorch when installed. Under the table: every optimizer left out, and why.

  optimizers  comma-separated config names (default: all but muon, whose bfloat16
              orthogonalization takes minutes per step on a CPU)
  shape       the parameter set: blocks (default: blocks of width x width plus three width-vectors,
              about `params` parameters), resnet50 (its 161 tensors, 64 to 2.4M elements, 25.6M in
              all), vit_b_16 (its 152 tensors, 86.6M), huge (4 matrices of 4096x4096), tiny (2000
              vectors of 64)
  params      parameters in the blocks set (default 8000000)
  width       matrix side in the blocks set (default 1024)
  repeats     timed steps per optimizer (default 15)
  warmup      untimed steps first, compilation included (default 3)
  threads     torch CPU threads (default: torch's)
  --csv PATH  also write the table as CSV
  --out DIR   also write the table as DIR/bench.csv"""

SETTINGS = {"params": 8_000_000, "width": 1024, "repeats": 15, "warmup": 3, "threads": 0}
# The parameter sets besides the default `blocks` (shaped by params= and width=): what each one is.
SHAPES = {
    "blocks": "blocks of width x width plus three width-vectors",
    "resnet50": "ResNet-50's tensors",
    "vit_b_16": "ViT-B/16's tensors",
    "huge": "4 matrices of 4096x4096",
    "tiny": "2000 vectors of 64",
}
# Each optimizer's goal: at most this many times the step of this baseline (issue 20).
GOALS = {"lars": ("sgd momentum (baseline)", 1.5), "lion": ("sgd momentum (baseline)", 1.2),
         "lamb": ("adamw (baseline)", 1.6), "sophia": ("adamw (baseline)", 1.6)}

# The same optimizer from other libraries: (library, class path). Settings shared by name.
REFERENCES = {
    "lion": [("timm", "timm.optim.Lion"), ("pytorch-optimizer", "pytorch_optimizer.Lion"),
             ("lion-pytorch", "lion_pytorch.Lion")],
    "lamb": [("timm", "timm.optim.Lamb"), ("pytorch-optimizer", "pytorch_optimizer.Lamb")],
    "lars": [("timm", "timm.optim.Lars"), ("pytorch-optimizer", "pytorch_optimizer.LARS")],
}
SHARED_SETTINGS = ("lr", "betas", "eps", "weight_decay", "momentum")

# Left out of the default set, the bench running on the CPU (named explicitly, they run): why.
SLOW_ON_CPU = {
    "muon": "torch.optim.Muon orthogonalizes in bfloat16; without bf16 matmul units one step on "
            "1024x1024 matrices takes minutes",
}


@dataclass
class Candidate:
    name: str
    implementation: str
    optimizer: Any
    times: list[float] = field(default_factory=list)
    state_bytes: int = 0


def parse(args: list[str]) -> tuple[dict[str, Any], list[str] | None, Path | None]:
    settings: dict[str, Any] = {**SETTINGS, "shape": "blocks"}
    names, csv_path, given = None, None, set()
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--csv", "--out"):
            if not rest:
                raise ConfigError(f"{arg} needs a {'PATH' if arg == '--csv' else 'folder'}.")
            if csv_path is not None:
                raise ConfigError(f"{arg}: the CSV's place is already given (--csv PATH or --out DIR, once).")
            value = rest.pop(0)  # --out as the other commands have it (optbench reproduce passes one)
            csv_path = Path(value) if arg == "--csv" else writable_folder("--out", value) / "bench.csv"
            continue
        key, sep, value = arg.partition("=")
        given.add(key)
        if key == "optimizers" and sep:
            names = [n for n in value.split(",") if n]
        elif key == "shape" and sep:
            if value not in SHAPES:
                raise ConfigError(f"shape={value}: no such parameter set. Available: {', '.join(SHAPES)}.")
            settings["shape"] = value
        elif key in SETTINGS and sep:
            settings[key] = whole_number(key, value, 0 if key in ("threads", "warmup") else 1)
        else:
            raise ConfigError(f"bench: unknown argument {arg!r}. Arguments: optimizers=, shape=, "
                              f"{'=, '.join(SETTINGS)}=, --csv PATH, --out DIR (see optbench bench --help).")
    shaped_by = sorted(given & {"params", "width"})
    if settings["shape"] != "blocks" and shaped_by:  # they would not change the set: refused, not ignored
        raise ConfigError(f"{shaped_by[0]}={settings[shaped_by[0]]}: shapes only shape=blocks, not "
                          f"shape={settings['shape']} ({SHAPES[settings['shape']]}); drop it or set shape=blocks.")
    return settings, names, csv_path


def whole_number(key: str, value: str, least: int) -> int:
    """`value` as an int of at least `least` (`8e6` is one); `inf`, `nan` and `2.5` are refused, not
    truncated or left to fail in int()."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number.is_integer():  # nan and inf are not integers either
        raise ConfigError(f"{key}={value}: must be a whole number >= {least}.")
    if number < least:
        raise ConfigError(f"{key}={value}: must be >= {least}.")
    return int(number)


def parameter_set(total: int, width: int, device: str = "cpu", shape: str = "blocks") -> list[Any]:
    """The tensors of preset `shape` (SHAPES; `blocks`: blocks of one width x width matrix and three
    width-vectors, about `total` parameters), with fixed random gradients (drawn on the CPU, so that
    every device gets the same numbers)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    shapes = preset_shapes(shape, total, width)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device)) for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(device)
    return params


def preset_shapes(shape: str, total: int, width: int) -> list[tuple[int, ...]]:
    """The tensor shapes of preset `shape`; a real model's are read from torchvision's model built on
    the meta device, which allocates no memory."""
    if shape == "blocks":
        blocks = max(1, round(total / (width * width + 3 * width)))
        return [s for _ in range(blocks) for s in [(width, width), (width,), (width,), (width,)]]
    if shape == "huge":
        return [(4096, 4096)] * 4
    if shape == "tiny":
        return [(64,)] * 2000
    import torch
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, shape)()
    return [tuple(p.shape) for p in model.parameters()]


def chosen(names: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The optimizer configs to bench: `names`, checked, or by default every config of
    configs/optimizer/ that is not slow on a CPU; and the ones left out, with why."""
    from optbench.paths import configs_dir

    available = sorted(p.stem for p in (configs_dir() / "optimizer").glob("*.yaml"))
    unknown = [n for n in names or [] if n not in available]
    if unknown:
        raise ConfigError(f"optimizers={unknown[0]}: no such optimizer. Available: {', '.join(available)}.")
    if names is not None:
        return names, {}
    left_out = {name: f"left out by default: {why}; name it (optimizers={name}) to include it"
                for name, why in SLOW_ON_CPU.items() if name in available}
    return [n for n in available if n not in left_out], left_out


def candidates(names: list[str], params: list[Any], skipped: dict[str, str]) -> list[Candidate]:
    """The baselines and each named optimizer with its references; what cannot be built goes into
    `skipped` (what: why) instead."""
    import torch

    from optbench.build import accepted, arguments, call_with_context, optimizer_from
    from optbench.config import compose
    from optbench.targets import resolve

    found = [
        Candidate("adamw (baseline)", "torch fused", torch.optim.AdamW(own_copy(params), lr=1e-3, fused=True)),
        Candidate("sgd momentum (baseline)", "torch fused",
                  torch.optim.SGD(own_copy(params), lr=1e-3, momentum=0.9, fused=True)),
    ]
    for name in names:
        extra = ["optimizer@optimizer.inner=adamw"] if name == "lookahead" else []
        node = compose([f"optimizer={name}", *extra]).optimizer
        target = str(node._target_)
        owner = "optbench" if target.startswith("optbench.") else target.split(".")[0]
        try:
            found.append(Candidate(name, owner, optimizer_from(node, own_copy(params))))
        except ImportError as e:
            skipped[name] = f"not installed: {e}"
        settings = {k: v for k, v in arguments(node).items() if k in SHARED_SETTINGS}
        for library, path in REFERENCES.get(name, []):
            try:
                cls = resolve(path, "optimizer")
            except ImportError as e:
                skipped[f"{name} ({library})"] = f"not installed: {e}"
                continue
            names_ok = accepted(cls)
            kwargs = {k: v for k, v in settings.items() if names_ok is None or k in names_ok}
            found.append(Candidate(name, library, call_with_context(cls, kwargs, {"params": own_copy(params)})))
    return found


def own_copy(params: list[Any]) -> list[Any]:
    """The parameters copied for one optimizer, sharing their gradients. Steps on shared weights would
    be unlike training's: LARS keeps each weight's norm from one step to the next while nothing else
    writes the weight, and another optimizer's step would make it read them again."""
    import torch

    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for copy, p in zip(copies, params):
        copy.grad = p.grad
    return copies


def measure(found: list[Candidate], warmup: int, repeats: int) -> None:
    import torch

    from optbench.optim.wrapping import state_bytes

    # CUDA queues kernels and returns: wait for each step's before reading the clock.
    finish = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    for c in found:
        for _ in range(warmup):
            c.optimizer.step()
        c.state_bytes = state_bytes(c.optimizer)  # through wrappers, without creating state
    for _ in range(repeats):
        for c in found:
            finish()
            start = time.perf_counter()
            c.optimizer.step()
            finish()
            c.times.append(time.perf_counter() - start)


def rows(found: list[Candidate], n_params: int) -> list[dict[str, Any]]:
    """Each candidate's minimum and median step time (ms), and each beside the baselines' same statistic;
    found[:2] are the baselines, fused AdamW and fused SGD-momentum."""
    adamw, sgd = found[:2]
    out = []
    for c in found:
        row: dict[str, Any] = {"optimizer": c.name, "implementation": c.implementation}
        for suffix, statistic in (("_min", min), ("", statistics.median)):  # "": the median, as before
            ms = statistic(c.times) * 1e3
            row[f"step_ms{suffix}"] = round(ms, 3)
            row[f"vs_fused_adamw{suffix}"] = round(ms / (statistic(adamw.times) * 1e3), 2)
            row[f"vs_fused_sgd_momentum{suffix}"] = round(ms / (statistic(sgd.times) * 1e3), 2)
        row["state_bytes_per_param"] = round(c.state_bytes / n_params, 3)
        out.append(row)
    return out


def goal_lines(table: list[dict[str, Any]]) -> list[str]:
    """optbench's optimizers against their goals (GOALS), by minimum and median ratio."""
    lines = []
    for row in table:
        if row["implementation"] != "optbench" or row["optimizer"] not in GOALS:
            continue
        baseline, limit = GOALS[row["optimizer"]]
        key = "vs_fused_adamw" if baseline.startswith("adamw") else "vs_fused_sgd_momentum"
        low, mid = row[f"{key}_min"], row[key]
        verdict = "met" if mid <= limit else ("met by the minimum only" if low <= limit else "missed")
        lines.append(f"goal: {row['optimizer']} <= {limit}x {baseline.removesuffix(' (baseline)')}: "
                     f"{low}x (min), {mid}x (median): {verdict}")
    return lines


def notes(table: list[dict[str, Any]], skipped: dict[str, str]) -> list[str]:
    """What the table does not show: the optimizers left out with why, and, for the 8-bit ones,
    their step time beside fused AdamW's as measured here, with the state memory that it buys."""
    lines = [f"{name}: {why}" for name, why in skipped.items()]
    adamw = table[0]  # the fused AdamW baseline
    for row in table:
        if row["implementation"] == "bitsandbytes":
            lines.append(f"{row['optimizer']} (bitsandbytes): a step takes {row['vs_fused_adamw']}x "
                         f"as long as fused AdamW's on this CPU, for {row['state_bytes_per_param']} instead of "
                         f"{adamw['state_bytes_per_param']} state bytes per parameter.")
    return lines


def print_table(table: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(title=title)
    headers = {"optimizer": "optimizer", "implementation": "implementation", "step_ms_min": "step ms (min)",
               "step_ms": "(median)", "vs_fused_adamw_min": "x fused AdamW (min)", "vs_fused_adamw": "(median)",
               "vs_fused_sgd_momentum_min": "x fused SGD-m (min)", "vs_fused_sgd_momentum": "(median)",
               "state_bytes_per_param": "state B/param"}
    for key, header in headers.items():
        view.add_column(header, justify="left" if key in ("optimizer", "implementation") else "right")
    for row in table:
        view.add_row(*(str(row[k]) for k in headers))
    Console().print(view)


@reports_bad_input
def main(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    settings, names, csv_path = parse(args)
    names, skipped = chosen(names)  # bad input is reported before torch is imported

    import torch

    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    torch.set_flush_denormal(True)  # decaying states must not reach slow denormal arithmetic
    params = parameter_set(settings["params"], settings["width"], shape=settings["shape"])
    n_params = sum(p.numel() for p in params)
    found = candidates(names, params, skipped)
    measure(found, settings["warmup"], settings["repeats"])
    table = rows(found, n_params)
    title = (f"optimizer step on {n_params / 1e6:.2f}M parameters ({len(params)} tensors, shape={settings['shape']}), "
             f"{torch.get_num_threads()} threads, min and median of {settings['repeats']} steps")
    print_table(table, title)
    for line in [*goal_lines(table), *notes(table, skipped)]:
        print(f"note: {line}")
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        print(f"wrote {csv_path}")
    return 0
