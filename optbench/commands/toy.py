"""`optbench toy`: optimizers on the chapter's 2-D test functions (section 1.2, Exercise 1).

Each optimizer is built from its config exactly as for training (`optimizer=sgd,momentum,adam`
sweeps, `optimizer.lr=...` sets the rate of all), over one parameter, the point (x, y). The loss
is f(x, y) - min f, so that "loss < 0.01" means the same on every function.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from optbench.commands.common import reports_bad_input, timestamped_output, writable_folder
from optbench.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from omegaconf import DictConfig


@dataclass(frozen=True)
class Problem:
    f: Callable[[Any, Any], Any]  # works on floats, tensors and numpy arrays alike
    minimum: float
    start: tuple[float, float]
    lr: float  # a rate at which plain SGD is stable here (the default of optimizer.lr)
    bounds: tuple[float, float, float, float]  # x0, x1, y0, y1 of the contour plot


def _sin(v: Any) -> Any:
    return v.sin() if hasattr(v, "sin") else math.sin(v)


PROBLEMS = {
    "rosenbrock": Problem(lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2, 0.0, (-1.5, 2.0), 1e-3,
                          (-2, 2, -1, 3)),
    # The chapter's non-convex surface: ripples on a bowl, minimum 0 at the origin.
    "nonconvex": Problem(lambda x, y: _sin(x**2 + y**2) / (x**2 + y**2 + 1) + 0.1 * (x**2 + y**2), 0.0,
                         (2.0, 2.0), 0.1, (-3, 3, -3, 3)),
    # Curvatures 1 and 20: SGD's stable rate is set by the steep axis and crawls along the flat one.
    "ravine": Problem(lambda x, y: 0.5 * x**2 + 10 * y**2, 0.0, (-5.0, 1.0), 0.04, (-6, 6, -1.5, 1.5)),
    # A saddle at the origin between two minima (+-1, 0) of value -1/4: started almost on the ridge.
    "saddle": Problem(lambda x, y: x**4 / 4 - x**2 / 2 + y**2 / 2, -0.25, (1e-3, 1.5), 0.05, (-1.6, 1.6, -1.6, 1.6)),
    "beale": Problem(lambda x, y: (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2,
                     0.0, (1.0, 1.5), 1e-2, (-1, 4, -1.5, 2)),
}


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="optbench toy",
        description="Optimizers (as configured for training) on 2-D test functions: a contour plot "
        "with trajectories and a table of steps to loss < threshold.",
        epilog="example: optbench toy optimizer=sgd,momentum,nesterov,adam --function ravine",
    )
    parser.add_argument("--function", choices=sorted(PROBLEMS), default="rosenbrock")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.01, help="loss counted as reached (default 0.01)")
    parser.add_argument("--out", type=Path, help="output folder (default: outputs/toy/DATE/TIME)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides; optimizer=a,b,c gives one trajectory each")
    return parser.parse_intermixed_args(args)


@reports_bad_input
def main(args: list[str]) -> int:
    options = parse_args(args)
    if options.steps < 1:
        raise ConfigError(f"--steps={options.steps}: must be an integer >= 1 (the updates of each optimizer).")
    if options.out is not None:
        writable_folder("--out", options.out)
    problem = PROBLEMS[options.function]
    runs = {name: trajectory(problem, cfg, options.steps) for name, cfg in optimizer_configs(problem, options.overrides)}
    out = options.out or timestamped_output("toy")
    out.mkdir(parents=True, exist_ok=True)
    rows = [(name, steps_to(losses(problem, path), options.threshold), losses(problem, path)[-1])
            for name, path in runs.items()]
    with (out / "toy.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", f"steps to loss < {options.threshold}", "final loss"])
        writer.writerows((name, "" if steps is None else steps, repr(final)) for name, steps, final in rows)
    draw(problem, options.function, runs).savefig(out / "toy.png", dpi=150)
    for name, steps, final in rows:
        print(f"{name:<28} steps to < {options.threshold}: {'not reached' if steps is None else steps:<12} "
              f"final loss {final:.3g}")
    print(f"wrote {out / 'toy.png'}\nwrote {out / 'toy.csv'}")
    return 0


def optimizer_configs(problem: Problem, overrides: list[str]) -> list[tuple[str, DictConfig]]:
    """(label, optimizer config) for every combination of the overrides' values."""
    from optbench.config import compose, sweep_choices
    from optbench.validate import check_optimizer

    # The problem's LR first, so that the user's optimizer.lr (later) wins.
    choices = sweep_choices([f"optimizer.lr={problem.lr}", *overrides])
    swept = [values for values in choices if len(values) > 1]
    result = []
    for variant in itertools.product(*choices):
        cfg = compose(list(variant))
        problems = check_optimizer(cfg.optimizer)  # what a run would refuse, before any step
        if problems:
            raise ConfigError(problems)
        label = " ".join(o for o in variant if any(o in values for values in swept)) or cfg.hydra.runtime.choices.optimizer
        result.append((label, cfg.optimizer))
    return result


def trajectory(problem: Problem, node: DictConfig, steps: int, dtype: str = "float32") -> list[tuple[float, float]]:
    """The points an optimizer visits from the problem's start, `steps` updates, computed in `dtype`."""
    import torch

    from optbench.build import optimizer_from

    point = torch.tensor(problem.start, dtype=getattr(torch, dtype), requires_grad=True)
    try:
        optimizer = optimizer_from(node, [point])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"optimizer: {e}") from None
    path = [problem.start]
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = problem.f(point[0], point[1])
        loss.backward()
        optimizer.step(_closure(problem, point, optimizer))
        x, y = point.tolist()
        path.append((x, y))
        if not (math.isfinite(x) and math.isfinite(y)):
            break  # diverged: the rest of the path is NaN
    return path


def _closure(problem: Problem, point: torch.Tensor, optimizer: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
    """For optimizers that re-evaluate the loss (L-BFGS style); plain ones ignore it."""
    import torch

    def closure() -> torch.Tensor:
        with torch.enable_grad():
            optimizer.zero_grad(set_to_none=True)
            loss = problem.f(point[0], point[1])
            loss.backward()
        return loss

    return closure


def losses(problem: Problem, path: list[tuple[float, float]]) -> list[float]:
    return [float(problem.f(x, y)) - problem.minimum for x, y in path]


def steps_to(values: list[float], threshold: float) -> int | None:
    """The first step whose loss is below `threshold` (step 0 is the start); None if never."""
    return next((i for i, v in enumerate(values) if v < threshold), None)


def draw(problem: Problem, name: str, runs: dict[str, list[tuple[float, float]]]) -> Figure:
    """Contours of f on equal axes (a ravine looks as narrow as it is), each optimizer's path on top."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from optbench.commands.report_plots import line_styles

    x0, x1, y0, y1 = problem.bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    heights = problem.f(xs, ys) - problem.minimum + 1e-3  # above zero, for the log color scale
    # The plot's shape follows the bounds' (equal aspect), plus room for the colour bar and legend.
    figure = Figure(figsize=(10, min(10.0, max(4.0, 8 * (y1 - y0) / (x1 - x0) + 1.5))), layout="constrained")
    axis = figure.subplots()
    contour = axis.contourf(xs, ys, heights, levels=np.geomspace(heights.min(), heights.max(), 30),
                            norm=LogNorm(), cmap="viridis", alpha=0.8)
    colorbar = figure.colorbar(contour, ax=axis, label="f - min f (+0.001)", ticks=LogLocator())
    colorbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, not 1.00383x10^-2
    colorbar.ax.yaxis.set_minor_formatter(NullFormatter())
    # Paths share stretches (on Rosenbrock, SGD's lies inside momentum's valley): the longest is
    # drawn first and widest, each shorter one narrower on top, so every path stays visible.
    styles = line_styles(list(runs))
    order = sorted(runs, key=lambda label: path_length(runs[label]), reverse=True)
    handles = {}
    for i, label in enumerate(order):
        px, py = zip(*runs[label])
        color, linestyle = styles[label]
        handles[label], = axis.plot(px, py, color=color, linestyle=linestyle, linewidth=1.5 + 1.5 * (len(runs) - 1 - i))
        axis.plot(px[-1], py[-1], "o", color=color, markeredgecolor="white", markersize=8)
    start, = axis.plot(*problem.start, "k*", markersize=14)
    axis.set_xlim(x0, x1)
    axis.set_ylim(y0, y1)
    axis.set_aspect("equal")
    axis.set_xlabel("x")
    axis.set_ylabel("y")
    axis.set_title(f"{name}: optimizer trajectories")
    axis.legend([*(handles[label] for label in runs), start], [*runs, "start"])  # in the command's order
    return figure


def path_length(path: list[tuple[float, float]]) -> float:
    """The distance travelled along a path (its finite steps: a diverged path ends in NaN)."""
    steps = (math.dist(a, b) for a, b in zip(path, path[1:]))
    return math.fsum(d for d in steps if math.isfinite(d))
