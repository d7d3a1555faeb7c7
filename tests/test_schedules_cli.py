"""`optbench schedules`, schedules inside a real training run, and bad schedule input at the CLI."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.image import imread
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import read_metrics, run_cli
from optbench.build import build_scheduler
from optbench.cli import main
from optbench.config import compose
from optbench.commands.schedules import draw, read_csv
from optbench.paths import configs_dir
from optbench.trainer import Trainer

FIVE = "scheduler=step,exponential,cosine,onecycle,warmup_cosine"


def scheduler_values(overrides: list[str], steps: int) -> dict[str, list[float]]:
    """LR and momentum per step from the scheduler a run builds (its optimizer on one parameter)."""
    cfg = compose(overrides)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr,
                                momentum=cfg.optimizer.get("momentum", 0.9))
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps, None, base_lr=cfg.optimizer.lr)
    values: dict[str, list[float]] = {"lr": [], "momentum": []}
    for _ in range(steps):
        values["lr"].append(optimizer.param_groups[0]["lr"])
        values["momentum"].append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return values


def test_five_schedules_of_10k_steps_csv_is_the_png(workdir):
    result = run_cli("schedules", FIVE, "optimizer=sgd", "trainer.max_steps=10000", "--log", "--out", "plot",
                     cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "plot/schedules.png" in result.stdout and "plot/schedules.csv" in result.stdout

    columns = read_csv(workdir / "plot" / "schedules.csv")
    assert list(columns) == ["step", "step/lr", "exponential/lr", "cosine/lr", "onecycle/lr",
                             "onecycle/momentum", "warmup_cosine/lr"]
    assert columns["step"] == list(range(10_000))
    # Every value is the one the run's own scheduler sets (LambdaLR stepped, as the trainer does).
    for name in ("step", "exponential", "cosine", "onecycle", "warmup_cosine"):
        expected = scheduler_values([f"scheduler={name}", "optimizer=sgd", "trainer.max_steps=10000"], 10_000)
        assert columns[f"{name}/lr"] == expected["lr"], name
        if name == "onecycle":
            assert columns["onecycle/momentum"] == expected["momentum"]
    # The PNG is the drawing of exactly these values: redrawn from the CSV, pixel for pixel.
    redrawn = workdir / "redrawn.png"
    draw(columns, log_scale=True).savefig(redrawn, dpi=150)
    assert np.array_equal(imread(workdir / "plot" / "schedules.png"), imread(redrawn))


def test_every_schedule_drawn_together_has_a_line_style_of_its_own(workdir):
    names = sorted(p.stem for p in (configs_dir() / "scheduler").glob("*.yaml"))
    assert len(names) >= 13
    assert main(["schedules", f"scheduler={','.join(names)}", "optimizer=sgd", "trainer.max_steps=100",
                 "--out", str(workdir / "plot")]) == 0
    figure = draw(read_csv(workdir / "plot" / "schedules.csv"), log_scale=False)  # the PNG's drawing
    for axis in figure.axes:
        styles = [(to_hex(line.get_color()), line.get_linestyle()) for line in axis.get_lines()]
        assert len(set(styles)) == len(styles), styles
    lr_lines = figure.axes[0].get_lines()
    assert sorted(line.get_label() for line in lr_lines) == names


def test_schedules_warns_about_what_cannot_be_meant(workdir):
    result = run_cli("schedules", "scheduler=cosine,onecycle", "trainer.max_steps=500", "scheduler.T_max=200",
                     "+scheduler.total_steps=450", "--out", "plot", cwd=workdir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 3, warnings
    assert any(line.startswith("optbench schedules: warning: cosine: scheduler.T_max=200") for line in warnings)
    assert any(line.startswith("optbench schedules: warning: onecycle: scheduler.total_steps=450")
               and "500" in line for line in warnings)


def test_schedules_shows_a_warmup_longer_than_the_run_with_a_warning(workdir):
    result = run_cli("schedules", "scheduler=linear,cosine", "scheduler.warmup=600", "trainer.max_steps=500",
                     "--out", "plot", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning") == 2 and result.stderr.count("scheduler.warmup=600") == 2
    columns = read_csv(workdir / "plot" / "schedules.csv")
    assert columns["linear/lr"][-1] == pytest.approx(1e-3 * 499 / 600)  # still rising at the end


BAD_INPUT = {
    "milestones not increasing": (["scheduler=multistep", "scheduler.milestones=[300,100]"],
                                  "scheduler.milestones"),
    "T_0 below 1": (["scheduler=cosine_restarts", "scheduler.T_0=0"], "scheduler.T_0"),
    "pct_start 0": (["scheduler=onecycle", "scheduler.pct_start=0.0"], "scheduler.pct_start"),
    "pct_start 1.5": (["scheduler=onecycle", "scheduler.pct_start=1.5"], "scheduler.pct_start"),
    "warmup negative": (["scheduler=cosine", "scheduler.warmup=-5"], "scheduler.warmup"),
    "warmup a float of 1 or more": (["scheduler=cosine", "scheduler.warmup=1.5"], "scheduler.warmup"),
    "warmup longer than the run": (["scheduler=warmup_cosine", "scheduler.warmup=5000"], "scheduler.warmup"),
    "plateau on a metric never logged": (["scheduler=plateau", "scheduler.metric=bleu"], "scheduler.metric"),
    "epochs that are not a duration": (["scheduler=step", "scheduler.step_size=three"], "scheduler.step_size"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_schedule_input_is_exit_status_2_naming_the_key(case, workdir, capsys, monkeypatch):
    overrides, key = BAD_INPUT[case]
    monkeypatch.chdir(workdir)
    status = main(["run", *overrides, "trainer.max_steps=1000"])
    err = capsys.readouterr().err
    assert status == 2
    assert key in err and "Traceback" not in err
    assert not (workdir / "outputs").exists()  # refused before any run folder exists


def test_bad_input_exit_status_from_a_real_process(workdir):
    result = run_cli("run", "scheduler=warmup_cosine", "scheduler.warmup=2000", "trainer.max_steps=1000",
                     cwd=workdir)
    assert result.returncode == 2
    assert "scheduler.warmup=2000" in result.stderr and "1000" in result.stderr
    assert "Traceback" not in result.stderr


def train(tmp_path, overrides: list[str]) -> list[dict]:
    cfg = compose([*overrides, "trainer.progress=false", "trainer.log_every=1"])
    with open_dict(cfg):
        del cfg["hydra"]
    Trainer(cfg, tmp_path).fit()
    return read_metrics(tmp_path)


def test_a_run_logs_the_lr_and_cycled_momentum_each_step_used(tmp_path):
    overrides = ["scheduler=onecycle", "optimizer=momentum", "trainer.max_steps=12"]
    lines = [m for m in train(tmp_path, overrides) if m["split"] == "train"]
    expected = scheduler_values(overrides, 12)
    assert [m["step"] for m in lines] == list(range(1, 13))
    assert [m["lr"] for m in lines] == expected["lr"]
    assert [m["momentum"] for m in lines] == expected["momentum"]
    (run_tb,) = (tmp_path / "tb").iterdir()  # tb/<run name>/
    events = EventAccumulator(str(run_tb))
    events.Reload()
    assert {"lr/no_decay", "momentum/no_decay"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("momentum/no_decay")] == pytest.approx(expected["momentum"])


def test_plateau_reduces_the_lr_from_the_step_after_an_evaluation(tmp_path):
    # An absolute threshold of 100 makes every evaluation after the first a bad one.
    overrides = ["scheduler=plateau", "scheduler.patience=0", "scheduler.threshold_mode=abs",
                 "scheduler.threshold=100", "scheduler.factor=0.5", "trainer.eval_every=3",
                 "trainer.max_steps=9"]
    lines = train(tmp_path, overrides)
    lrs = [m["lr"] for m in lines if m["split"] == "train"]
    assert [m["step"] for m in lines if m["split"] == "val"] == [3, 6, 9]
    assert lrs == [1e-3] * 6 + [5e-4] * 3  # the evaluation at step 6 reduced it
    assert "momentum" not in lines[0]  # nothing cycles momentum here
