"""One source each for the run's base LR (after `optimizer.lr_scaling`) and for the metrics that a
workload logs: validation, the schedule preview, the optimizer and the run all read the same one."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from omegaconf import open_dict

import optbench.build
from conftest import TINY, read_metrics, run_cli, run_dirs
from optbench.build import build_data, build_model, build_optimizer, build_param_groups, build_scheduler
from optbench.targets import import_path as locate
from optbench.config import compose
from optbench.errors import ConfigError
from optbench.lr_scaling import planned_batch, scaled_lr, scaled_optimizer
from optbench.commands.schedules import read_csv
from optbench.validate import validate_config

STEPS = 40
MUON_FLOOR = ["optimizer=muon", "scheduler=cosine", "scheduler.eta_min=1e-5"]
LOOKAHEAD_FLOOR = ["optimizer=lookahead", "optimizer@optimizer.inner=sgd", "scheduler=cosine", "scheduler.eta_min=1e-3"]


def cosine(step: int, base_lr: float, eta_min: float, total: int = STEPS) -> float:
    """torch's CosineAnnealingLR in closed form: the LR that step `step` of a cosine to eta_min uses."""
    return eta_min + (base_lr - eta_min) * 0.5 * (1 + math.cos(math.pi * step / total))


def job(overrides: list[str]):
    cfg = compose(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.mark.parametrize(("overrides", "base_lr", "eta_min"), [(MUON_FLOOR, 0.02, 1e-5), (LOOKAHEAD_FLOOR, 0.1, 1e-3)])
def test_a_floor_given_as_an_lr_is_against_the_wrapped_or_own_lr(overrides, base_lr, eta_min, workdir):
    check = run_cli("check", *overrides, cwd=workdir)
    assert check.returncode == 0, check.stderr

    preview = run_cli("schedules", *overrides, f"trainer.max_steps={STEPS}", "--out", "plot", cwd=workdir)
    assert preview.returncode == 0, preview.stderr
    expected = [cosine(s, base_lr, eta_min) for s in range(STEPS)]
    assert read_csv(workdir / "plot" / "schedules.csv")["cosine/lr"] == pytest.approx(expected, rel=1e-12)

    # The run's own path: optimizer and scheduler built as the trainer builds them, the base LR handed on.
    cfg = job([*overrides, f"trainer.max_steps={STEPS}"])
    model = build_model(cfg.model, build_data(cfg.data))
    node, lr = scaled_optimizer(cfg.optimizer, planned_batch(cfg))
    optimizer = build_optimizer(node, model, cfg.params)
    scheduler = build_scheduler(cfg.scheduler, optimizer, STEPS, None, base_lr=lr.value)
    assert lr.value == base_lr
    for _ in range(STEPS):
        optimizer.step()  # no gradients: nothing moves, but torch's step-order check is satisfied
        scheduler.step()
    first = optimizer.param_groups[0]  # a group at the base LR (Muon's hidden matrices; the inner SGD's)
    assert first["lr"] == pytest.approx(eta_min, rel=1e-12)


def test_lr_scaling_gives_the_preview_validation_and_run_one_base_lr(workdir, monkeypatch):
    # Effective batch 32 x 2 = 64 against a reference of 256: AdamW's 1e-3 becomes 2.5e-4.
    overrides = ["scheduler=constant", "data.batch_size=32", "trainer.accumulation_steps=2",
                 "optimizer.lr_scaling=linear", "optimizer.reference_batch=256"]
    expected = 1e-3 * 64 / 256

    handed = []  # the base LR that validation hands to the schedule it checks
    build_schedule = optbench.build.build_schedule
    monkeypatch.setattr(optbench.build, "build_schedule",
                        lambda *args: handed.append(args[3]) or build_schedule(*args))
    validate_config(job([*overrides, "trainer.max_steps=6"]))
    assert handed == [pytest.approx(expected)]

    preview = run_cli("schedules", *overrides, "trainer.max_steps=6", "--out", "plot", cwd=workdir)
    assert preview.returncode == 0, preview.stderr
    assert read_csv(workdir / "plot" / "schedules.csv")["constant/lr"] == pytest.approx([expected] * 6)

    result = run_cli("run", *overrides, *TINY, cwd=workdir)
    assert result.returncode == 0, result.stderr
    train = [m for m in read_metrics(run_dirs(workdir / "outputs")[-1]) if m["split"] == "train"]
    assert train[0]["lr"] == pytest.approx(expected)


def test_muon_scaling_keeps_the_ratio_of_its_two_lrs():
    cfg = job(["optimizer=muon", "optimizer.lr_scaling=sqrt", "optimizer.reference_batch=32", "data.batch_size=128"])
    node, lr = scaled_optimizer(cfg.optimizer, planned_batch(cfg))
    assert (lr.value, lr.factor) == (0.04, 2.0) and lr == scaled_lr(cfg.optimizer, planned_batch(cfg))
    assert (node.lr, node.adamw_lr) == pytest.approx((0.04, 6e-4))
    assert "adamw_lr likewise" in lr.note and "lr_scaling" not in node


def test_an_optimizer_without_a_configured_lr_has_its_class_default():
    cfg = job(["optimizer=lookahead", "optimizer@optimizer.inner=adam", "~optimizer.inner.lr",
               "optimizer.lr_scaling=linear", "optimizer.reference_batch=64"])  # digits: batch 128
    assert scaled_lr(cfg.optimizer, 128).value == pytest.approx(2 * 1e-3)  # torch.optim.Adam's lr=1e-3
    node, _ = scaled_optimizer(cfg.optimizer, 128)
    assert node.inner.lr == pytest.approx(2e-3)


def test_build_does_not_import_lr_scaling():
    tree = ast.parse(Path(optbench.build.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "optbench.lr_scaling" not in imported


# --------------------------------------------------------------------- a workload's metrics


def test_plateau_on_a_metric_of_the_workload_is_accepted(workdir):
    result = run_cli("check", "model=rnn", "data=chars", "scheduler=plateau", "scheduler.metric=bits",
                     "trainer.max_steps=100", cwd=workdir)
    assert result.returncode == 0, result.stderr


def test_plateau_on_another_metric_lists_the_workloads(workdir):
    result = run_cli("check", "model=rnn", "data=chars", "scheduler=plateau", "scheduler.metric=bleu",
                     "trainer.max_steps=100", cwd=workdir)
    assert result.returncode == 2
    assert "scheduler.metric='bleu'" in result.stderr and "logs loss, acc, bits" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("overrides", "message"), [
    (["data=chars", "model=rnn", "data.target='val/modes >= 3'"], "no metric 'modes'; it logs loss, acc, bits"),
    (["data=ring", "model=gan_ring", "data.target='acc >= 0.9'"], "no metric 'acc'; it logs modes, hq"),
    (["scheduler=plateau", "scheduler.metric=ema_acc"], "scheduler.metric='ema_acc': never logged"),
])
def test_targets_and_metrics_are_checked_against_the_workloads_metrics(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(job([*overrides, "trainer.max_steps=100"]))


def test_the_ema_of_the_weights_logs_its_own_metrics():
    validate_config(job(["model=rnn", "data=chars", "scheduler=plateau", "scheduler.metric=ema_bits",
                         "trainer.ema.decay=0.99", "trainer.max_steps=100"]))


def test_a_monitor_never_logged_is_a_warning():
    warnings = validate_config(job(["data=least_squares", "trainer.max_steps=100"]))
    assert any(w.startswith("trainer.monitor='acc': never logged") and "logs loss" in w for w in warnings)
    assert validate_config(job(["data=least_squares", "trainer.monitor=loss", "trainer.max_steps=100"])) == []


SMALL_DATA = {
    "digits": [], "synthetic": ["data.train_size=8", "data.val_size=8"],
    "counting": ["data.train_size=8", "data.val_size=8"],
    "chars": ["data.max_chars=5000"], "masked_chars": ["data.max_chars=5000"], "least_squares": [],
    "ring": ["data.train_size=512"], "digit_images": ["data.size=8"],
}


@pytest.mark.parametrize("name", list(SMALL_DATA))
def test_a_data_sets_declared_task_is_the_task_of_its_data(name):
    node = compose([f"data={name}", *SMALL_DATA[name]]).data
    assert type(build_data(node).task) is locate(node._target_).task


def test_muon_runs_its_adamw_part_at_adamw_lr_times_each_groups_scale():
    cfg = job(["optimizer=muon", "params=discriminative", "model=resnet", "model.depth=8"])
    model = build_model(cfg.model, build_data(cfg.data))
    optimizer = build_optimizer(cfg.optimizer, model, cfg.params)
    scales = {g["name"]: g["lr_scale"] for g in build_param_groups(cfg.params, model, 1.0)}
    for group in optimizer.param_groups:
        name, kind = group["name"].rsplit(".", 1)
        base = cfg.optimizer.lr if kind == "muon" else cfg.optimizer.adamw_lr
        assert group["lr"] == pytest.approx(base * scales[name]), group["name"]
