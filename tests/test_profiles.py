"""Performance profiles in `optbench report`: ratios and rho(tau) against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from optbench.cli import main
from optbench.profiles import optimizer_groups, performance_profiles
from optbench.finished_runs import find_runs

WORKLOADS = {  # name -> (model config, data config)
    "digits": ({"_target_": "optbench.models.MLP", "hidden": [256]}, {"_target_": "optbench.data.digits", "batch_size": 128}),
    "quadratic": ({"_target_": "optbench.models.MLP", "hidden": []},
                  {"_target_": "optbench.datasets.regression.least_squares", "batch_size": 64}),
    "quadratic_mlp": ({"_target_": "optbench.models.MLP", "hidden": [16]},
                      {"_target_": "optbench.datasets.regression.least_squares", "batch_size": 64}),
}

# Training seconds to target of seeds 0 and 1 (None: never reached).
TIMES = {
    ("sgd", "digits"): [10, 12], ("adam", "digits"): [4, 6], ("lion", "digits"): [None, None],
    ("sgd", "quadratic"): [3, 3], ("adam", "quadratic"): [6, 6], ("lion", "quadratic"): [12, None],
    ("sgd", "quadratic_mlp"): [8, 8], ("adam", "quadratic_mlp"): [2, 2], ("lion", "quadratic_mlp"): [3, 3],
}


def fake_run(folder: Path, optimizer: str, workload: str, seed: int, seconds: float | None,
             extra: tuple[str, ...] = (), lr: float = 0.1) -> None:
    """A run folder with the contract's files; only what the profile reads is chosen."""
    model, data = WORKLOADS[workload]
    (folder / ".hydra").mkdir(parents=True)
    overrides = [f"optimizer={optimizer}", f"model.hidden={model['hidden']}", f"data={workload}", *extra,
                 f"trainer.seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- '{o}'\n" for o in overrides))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "epoch": 0.1, "time": 0.1, "split": "train",
                                                      "loss": 1.0, "lr": 0.1}) + "\n")
    target = {"goal": "val/loss <= 0.001", "reached": seconds is not None}
    if seconds is not None:
        target.update(step=10, time_s=seconds + 0.5, train_time_s=seconds)
    summary = {"status": "completed", "steps": 10, "final": {"val/loss": 0.1}, "best": {"val/loss": 0.1},
               "target": target, "config": {"model": model, "data": data,
                                            "optimizer": {"_target_": f"torch.optim.{optimizer}", "lr": lr,
                                                          "_search": {"lr": {"low": 1e-3, "high": 1.0}}},
                                            "trainer": {"monitor": "loss", "monitor_mode": "min"}}}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    job = 0
    for (optimizer, workload), seconds in TIMES.items():
        for seed, t in enumerate(seconds):
            fake_run(tmp_path / "sweep" / str(job), optimizer, workload, seed, t)
            job += 1
    return tmp_path / "sweep"


def test_ratios_and_profiles_match_hand_computed_values(sweep: Path) -> None:
    profiles = performance_profiles(optimizer_groups(find_runs([sweep])))
    assert profiles is not None and len(profiles.workloads) == 3
    # Medians over seeds: digits sgd 11, adam 5; quadratic sgd 3, adam 6, lion inf (one seed
    # never reached: median of 12 and inf); quadratic_mlp sgd 8, adam 2, lion 3.
    expected = {"sgd": [11 / 5, 1.0, 4.0], "adam": [1.0, 2.0, 1.0], "lion": [math.inf, math.inf, 1.5]}
    for optimizer, ratios in expected.items():
        assert profiles.ratios[optimizer] == pytest.approx(ratios), optimizer
    assert profiles.times["sgd"] == pytest.approx([11.0, 3.0, 8.0])
    rho = {tau: [profiles.rho(o, tau) for o in expected] for tau in (1.0, 1.5, 2.2, 4.0, 100.0)}
    assert rho[1.0] == pytest.approx([1 / 3, 2 / 3, 0])
    assert rho[1.5] == pytest.approx([1 / 3, 2 / 3, 1 / 3])
    assert rho[2.2] == pytest.approx([2 / 3, 1.0, 1 / 3])
    assert rho[4.0] == pytest.approx([1.0, 1.0, 1 / 3])
    assert rho[100.0] == pytest.approx([1.0, 1.0, 1 / 3])  # never reached stays out at any tau
    # AlgoPerf's score: sum over workloads of (4 - ratio) for ratios <= 4, over 3 workloads x (4 - 1).
    assert [profiles.score(o) for o in expected] == pytest.approx([(1.8 + 3 + 0) / 9, (3 + 2 + 3) / 9, 2.5 / 9])


def test_report_draws_the_profile_into_png_and_html(sweep: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    assert "Performance profiles" in capsys.readouterr().out
    assert (out / "performance_profiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "Performance profiles (time to target)" in page and "<h2>performance_profiles</h2>" in page
    assert "<td>sgd</td><td>11 (2.20)</td>" in page and "not reached" in page  # sgd's time and ratio on the digits


def test_an_optimizer_is_its_resolved_config_whatever_else_its_runs_vary(tmp_path: Path) -> None:
    """Two sweeps that differ in run length (one per workload) profile one sgd, not two sgds with
    one workload each; two LRs of adam are two optimizers, named by what tells them apart."""
    for seed in (0, 1):
        fake_run(tmp_path / "long" / f"sgd{seed}", "sgd", "digits", seed, 10, extra=("trainer.max_steps=400",))
        fake_run(tmp_path / "long" / f"adam{seed}", "adam", "digits", seed, 5, extra=("trainer.max_steps=400",))
        fake_run(tmp_path / "short" / f"sgd{seed}", "sgd", "quadratic", seed, 3, extra=("trainer.max_steps=100",))
        fake_run(tmp_path / "short" / f"adam{seed}", "adam", "quadratic", seed, 6,
                 extra=("trainer.max_steps=100", "optimizer.lr=0.01"), lr=0.01)
    profiles = performance_profiles(optimizer_groups(find_runs([tmp_path])))
    assert profiles is not None
    assert profiles.ratios == {"adam lr=0.1": [1.0, math.inf], "sgd": [2.0, 1.0], "adam lr=0.01": [math.inf, 2.0]}


def test_one_workload_draws_no_profile(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    digits_jobs = [p for p in sweep.iterdir() if "digits" in (p / ".hydra" / "overrides.yaml").read_text()]
    assert main(["report", *map(str, digits_jobs), "--out", str(out)]) == 0
    assert not (out / "performance_profiles.png").exists()
    assert "Performance profiles" not in (out / "report.html").read_text()
