"""`optbench toy`: the chapter's qualitative claims on 2-D problems, with the training configs."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path

import pytest
import torch

from optbench.build import optimizer_from
from optbench.cli import main
from optbench.config import compose
from optbench.commands.toy import PROBLEMS, draw, losses, optimizer_configs, steps_to, trajectory


def steps_on(function: str, optimizer: str, steps: int = 300) -> int | None:
    problem = PROBLEMS[function]
    ((_, node),) = optimizer_configs(problem, [f"optimizer={optimizer}"])
    return steps_to(losses(problem, trajectory(problem, node, steps)), 0.01)


def test_momentum_and_nesterov_beat_sgd_on_the_ravine() -> None:
    sgd = steps_on("ravine", "sgd")
    assert sgd is not None  # SGD gets there too, only later
    for name in ("momentum", "nesterov"):
        fast = steps_on("ravine", name)
        assert fast is not None and fast < sgd, (name, fast, sgd)


def test_adam_update_is_invariant_to_a_diagonal_rescaling_of_the_gradient() -> None:
    """Adam divides each coordinate by the root of its own second moment: scaling the gradient
    by D scales both, so the update is unchanged (up to eps). SGD's is not."""
    gradients = torch.randn(20, 2, dtype=torch.float64)
    scale = torch.tensor([1e-3, 1e3], dtype=torch.float64)

    def updates(optimizer: str, rescale: bool) -> torch.Tensor:
        cfg = compose([f"optimizer={optimizer}", "optimizer.eps=1e-30"] if optimizer == "adam" else [f"optimizer={optimizer}"])
        point = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = optimizer_from(cfg.optimizer, [point])
        for g in gradients:
            point.grad = g * scale if rescale else g.clone()
            opt.step()
        return point.detach().clone()

    torch.testing.assert_close(updates("adam", True), updates("adam", False), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(updates("sgd", True), updates("sgd", False))


def test_toy_cli_writes_plot_and_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["toy", "optimizer=sgd,adam", "--function", "beale", "--steps", "50", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "toy.csv").open()))
    assert [r["optimizer"] for r in rows] == ["optimizer=sgd", "optimizer=adam"]
    assert (tmp_path / "toy.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["toy", "optimizer=nosuch", "--out", str(tmp_path)]) == 2
    assert "optimizer=nosuch" in capsys.readouterr().err


def toy_figure(function: str, optimizers: list[str], steps: int):
    problem = PROBLEMS[function]
    runs = {label: trajectory(problem, node, steps)
            for label, node in optimizer_configs(problem, [f"optimizer={','.join(optimizers)}"])}
    figure = draw(problem, function, runs)
    figure.savefig(io.BytesIO(), format="png")  # lays out the ticks and their labels
    return figure


def test_toy_contours_are_drawn_to_scale_with_labelled_axes_and_plain_colour_bar_ticks() -> None:
    axis, colorbar = toy_figure("ravine", ["sgd"], 20).axes
    assert axis.get_aspect() == 1.0  # one unit of x as long as one of y: the ravine looks narrow
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("x", "y")
    ticks = [t.get_text() for t in colorbar.get_yticklabels() if t.get_text()]
    # Decades written as plain numbers (not 1.00383x10^-1), the range of f on the ravine among them.
    assert {"0.01", "0.1", "1", "10"} <= set(ticks) and all(re.fullmatch(r"\d+(\.\d+)?", t) for t in ticks), ticks


def test_sgd_stays_visible_where_momentum_follows_the_same_rosenbrock_valley() -> None:
    axis = toy_figure("rosenbrock", ["sgd", "momentum"], 1000).axes[0]
    legend = axis.get_legend()
    paths = {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles)}
    drawn = [line for line in axis.get_lines() if line.get_linestyle() != "None"]  # the paths, in drawing order
    by_colour = {line.get_color(): line for line in drawn}
    sgd, momentum = (by_colour[paths[f"optimizer={name}"].get_color()] for name in ("sgd", "momentum"))
    # Momentum travels further and lies underneath, wider: SGD's narrower line on top stays in sight.
    assert drawn.index(sgd) > drawn.index(momentum)
    assert sgd.get_linewidth() < momentum.get_linewidth()
    assert list(paths) == ["optimizer=sgd", "optimizer=momentum", "start"]  # the legend keeps the command's order


def test_toy_table_puts_momentum_and_nesterov_ahead_of_sgd_on_the_ravine(tmp_path: Path) -> None:
    """Exercise 1's table as the command writes it: steps to loss < 0.01 on the quadratic ravine."""
    assert main(["toy", "optimizer=sgd,momentum,nesterov", "--function", "ravine", "--steps", "300",
                 "--out", str(tmp_path)]) == 0
    steps = {r["optimizer"]: r["steps to loss < 0.01"] for r in csv.DictReader((tmp_path / "toy.csv").open())}
    sgd = int(steps["optimizer=sgd"])  # reached, only later
    assert int(steps["optimizer=momentum"]) < sgd and int(steps["optimizer=nesterov"]) < sgd, steps


def test_adam_follows_the_same_path_when_the_ravine_is_rescaled_per_axis() -> None:
    """Scaling the ravine's axes' curvatures by (c1, c2) multiplies its gradient by diag(c1, c2) at
    every point: Adam's trajectory (toy's own optimizer config) stays the same, SGD's does not."""
    ravine = PROBLEMS["ravine"]
    c1, c2 = 0.05, 20.0
    rescaled = dataclasses.replace(ravine, f=lambda x, y: c1 * 0.5 * x**2 + c2 * 10 * y**2)

    def path(problem, optimizer: str, lr: float) -> torch.Tensor:
        ((_, node),) = optimizer_configs(problem, [f"optimizer={optimizer}", f"optimizer.lr={lr}"])
        return torch.tensor(trajectory(problem, node, 100))

    torch.testing.assert_close(path(rescaled, "adam", 0.04), path(ravine, "adam", 0.04), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(path(rescaled, "sgd", 0.002), path(ravine, "sgd", 0.002), atol=1e-2)
