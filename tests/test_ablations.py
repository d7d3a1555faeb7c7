"""The chapter's experiments as recipes: every arm checks and runs at smoke scale, a recipe's sweep
runs through Hydra, and what each experiment measures (weight norm, peak memory, time to target)
lands in the run folders and in `optbench report`."""

from __future__ import annotations

import csv
import inspect
import math
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import read_summary, run_cli, run_dirs
from optbench.targets import import_path as locate
from optbench.checkpoint import load
from optbench.cli import main
from optbench.config import job_config, sweep_variants, with_sweeper_params
from optbench.datasets.regression import least_squares
from optbench.gan_trainer import trainer_class
from optbench.memory import LiveTensorBytes
from optbench.commands.report_plots import draw_curves
from optbench.finished_runs import RankingMetric, find_runs, group_runs, load_run, varied_keys

SWEEP_RECIPES = ["sgd_variants", "adam_vs_adamw", "optimizer_comparison", "scheduler_ablation", "large_batch"]
QUIET = ["trainer.progress=false", "trainer.tensorboard=false"]


def arms(recipe: str) -> list[list[str]]:
    """Every value of every key that the recipe sweeps, once (seeds aside), at smoke scale."""
    overrides = with_sweeper_params([f"recipe={recipe}", "smoke=true"])
    return list(sweep_variants([o for o in overrides if not o.startswith("trainer.seed=")]))


def fit(overrides: list[str], run_dir: Path) -> dict:
    cfg = job_config([*overrides, *QUIET])
    if "fused" in inspect.signature(locate(str(cfg.optimizer._target_))).parameters:
        # Three steps do not pay for compiling LAMB's or Lion's update (tens of seconds on a CPU).
        with open_dict(cfg):
            cfg.optimizer.fused = False
    return trainer_class(cfg)(cfg, run_dir).fit()


@pytest.mark.parametrize("recipe", SWEEP_RECIPES)
def test_every_arm_checks_and_runs_at_smoke_scale(recipe: str, tmp_path: Path) -> None:
    assert main(["check", "-m", f"recipe={recipe}", "smoke=true"]) == 0  # every arm and seed
    for i, arm in enumerate(arms(recipe)):
        summary = fit(arm, tmp_path / str(i))
        assert summary["status"] == "completed", arm
        assert summary["steps"] == summary["config"]["trainer"]["max_steps"], arm


def test_recipe_sweep_runs_every_arm_through_hydra_and_reports_weight_norms(workdir: Path) -> None:
    result = run_cli("run", "-m", "recipe=adam_vs_adamw", "smoke=true", "trainer.progress=false", cwd=workdir)
    assert result.returncode == 0, result.stderr
    jobs = run_dirs(workdir / "outputs" / "multirun")
    arms_run = sorted((read_summary(j)["config"]["optimizer"]["_target_"], read_summary(j)["config"]["trainer"]["seed"])
                      for j in jobs)
    assert arms_run == sorted((f"torch.optim.{o}", s) for o in ("Adam", "AdamW") for s in (0, 1, 2))

    # The weight norm in the logs is the norm of the weights the run ended with.
    run = load_run(jobs[0])
    state = load(jobs[0] / "checkpoints" / "last.pt")["model"]
    assert run.weight_norm()[3] == pytest.approx(math.sqrt(sum(float(w.square().sum()) for w in state.values())),
                                                 rel=1e-5)

    out = workdir / "report"
    assert main(["report", str(workdir / "outputs" / "multirun"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 6 and all(float(r["peak memory (MiB)"]) > 0 for r in rows)
    runs = find_runs([workdir / "outputs" / "multirun"])
    figure = draw_curves(group_runs(runs, varied_keys(runs)), RankingMetric.of(runs))
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert titles[-1].startswith("weight norm") and figure.axes[4].has_data()


def test_peak_memory_of_one_big_batch_exceeds_accumulated_micro_batches(tmp_path: Path) -> None:
    """Exercise 3's memory column: the same effective batch costs less memory when accumulated."""
    peaks = {}
    for arm in ("accumulate_64x16", "direct_1024"):
        summary = fit(["recipe=large_batch", "smoke=true", f"batching={arm}"], tmp_path / arm)
        assert summary["effective_batch_size"] == 1024
        peaks[arm] = summary["peak_memory"]["bytes"]
        assert "live tensors" in summary["peak_memory"]["measure"]
    params_bytes = 4 * read_summary(tmp_path / "direct_1024")["params"]
    assert params_bytes < peaks["accumulate_64x16"] < peaks["direct_1024"]


def test_live_tensor_bytes_counts_storages_once_and_frees_them() -> None:
    weights = torch.zeros(250)  # 1,000 bytes that exist before
    with LiveTensorBytes([weights]) as watch:
        a = torch.ones(1000)  # 4,000 bytes
        view = a[:10]  # a view: no new storage
        b = a * 2  # 4,000 more: the peak, 9,000
        del a, b, view
        c = torch.ones(10)
    assert watch.peak == 9000
    assert watch.live == 1000 + c.numel() * 4


def test_least_squares_has_the_stated_curvature_and_an_exact_optimum() -> None:
    data = least_squares(dim=20, condition=100.0, train_size=4096, val_size=16)
    x, y = data.x_train.double(), data.y_train.double()
    eigenvalues = torch.linalg.eigvalsh(x.T @ x / len(x))
    # The sample covariance's spectrum: 1 .. 1/100 up to sampling error (n = 200 d).
    assert eigenvalues.max().item() == pytest.approx(1.0, rel=0.15)
    assert eigenvalues.min().item() == pytest.approx(0.01, rel=0.15)
    solution = torch.linalg.lstsq(x, y.unsqueeze(1)).solution
    assert (x @ solution).squeeze(1).sub(y).abs().max().item() < 1e-4  # no noise: loss 0 at the optimum


def test_momentum_and_nesterov_reach_the_quadratic_target_sooner_than_sgd(tmp_path: Path) -> None:
    """The recipe at full scale (480 steps, one seed): the chapter's claim on its quadratic."""
    steps = {}
    for optimizer in ("sgd", "momentum", "nesterov"):
        summary = fit(["recipe=sgd_variants", f"optimizer={optimizer}"], tmp_path / optimizer)
        assert summary["steps"] == 480
        steps[optimizer] = summary["target"].get("step", math.inf)
    assert steps["momentum"] < steps["sgd"] and steps["nesterov"] < steps["sgd"], steps
