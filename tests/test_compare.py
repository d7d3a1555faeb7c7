"""`optbench compare`: the same Halton points for every optimizer, scaled into each one's own
search space; the best trial of each re-run over seeds; bad input refused with exit status 2."""

from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import read_summary, run_cli
from optbench.commands import compare
from optbench.config import compose
from optbench.paths import configs_dir

OPTIMIZERS = sorted(p.stem for p in (configs_dir() / "optimizer").glob("*.yaml"))


def unit(value: float, dim: dict) -> float:
    """Where `value` lies in the dimension's range, as a fraction (the Halton coordinate)."""
    if dim["log"]:
        return (math.log(value) - math.log(dim["low"])) / (math.log(dim["high"]) - math.log(dim["low"]))
    return (value - dim["low"]) / (dim["high"] - dim["low"])


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_declares_a_search_space(name):
    extra = ["optimizer@optimizer.inner=adamw"] if name == "lookahead" else []
    dims = compare.search_space(name, compose([f"optimizer={name}", *extra]).optimizer)
    assert dims and dims[0].key.endswith("lr")  # the LR first: the coordinate every optimizer shares


def test_trials_are_the_same_halton_points_in_each_space():
    budget = {"trials": 5, "seeds": 1, "seed": 0}
    plan = compare.plan_search(["sgd", "adamw", "lion"], ["trainer.max_steps=10"], budget)
    assert len(plan["points"]) == 5 and len({tuple(p) for p in plan["points"]}) == 5
    for name, trials in plan["trials"].items():
        dims = plan["space"][name]
        assert len(trials) == 5
        for trial, point in zip(trials, plan["points"]):
            assert trial[0] == f"optimizer={name}"
            values = [float(o.split("=", 1)[1]) for o in trial[1:]]
            assert [o.split("=", 1)[0] for o in trial[1:]] == [f"optimizer.{d['key']}" for d in dims]
            for value, dim, u in zip(values, dims, point):
                assert dim["low"] <= value <= dim["high"]
                assert unit(value, dim) == pytest.approx(u, abs=1e-3)  # 4 significant digits


@pytest.mark.parametrize("args, message", [
    (["optimizer=sgd,adamw", "~optimizer._search"], "optimizer=sgd: declares no search space"),
    (["optimizer=sgd", "budget.trials=0"], "budget.trials=0: must be an integer >= 1"),
    (["optimizer=sgd", "budget.seeds=two"], "budget.seeds=two: must be an integer >= 1"),
    (["optimizer=sgd", "budget.trails=3"], "budget.trails: no such budget setting"),
    (["optimizer=sgd", "trainer.seed=0,1"], "trainer.seed=0,1: compare sweeps only optimizer="),
    (["optimizer=sgd", "optimizer.lr=0.1"], "optimizer.lr: searched by compare for optimizer=sgd"),
    (["trainer.max_steps=5"], "optimizer: choose the optimizers to compare"),
    (["optimizer=sgd,adamx"], "optimizer=adamx: no such option"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert compare.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_compare_gives_every_optimizer_the_same_trials_then_seeds_its_best(tmp_path):
    from optbench.commands.report import main as report

    tiny = ["trainer.max_steps=3", "trainer.eval_every=3", "trainer.log_every=3", "trainer.progress=false",
            "trainer.diagnostics_every=null"]
    result = run_cli("compare", "optimizer=sgd,adamw", "budget.trials=2", "budget.seeds=2", *tiny,
                     "hydra.sweep.dir=cmp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "cmp"
    plan = json.loads((folder / "compare.json").read_text())
    search = json.loads((folder / "search" / "sweep.json").read_text())["jobs"]
    assert [job["status"] for job in search] == ["completed"] * 4
    by_optimizer = {name: [j for j in search if f"optimizer={name}" in j["overrides"]] for name in ("sgd", "adamw")}
    for name, jobs in by_optimizer.items():
        assert len(jobs) == 2  # the same budget for each
        for job, point in zip(jobs, plan["points"]):
            lr = float(next(o for o in job["overrides"] if o.startswith("optimizer.lr=")).split("=")[1])
            assert unit(lr, plan["space"][name][0]) == pytest.approx(point[0], abs=1e-3)  # the same point
            config = read_summary(folder / "search" / job["run_dir"])["config"]
            assert config["optimizer"]["lr"] == pytest.approx(lr)
    seeds = json.loads((folder / "seeds" / "sweep.json").read_text())["jobs"]
    assert len(seeds) == 4 and all(job["status"] == "completed" for job in seeds)
    for name, jobs in by_optimizer.items():
        best = max(jobs, key=lambda j: j["best"]["val/acc"])
        runs = [j for j in seeds if f"optimizer={name}" in j["overrides"]]
        assert [j["overrides"][-1] for j in runs] == ["trainer.seed=1", "trainer.seed=2"]
        for job in runs:  # the best trial's values, re-run
            assert [o for o in job["overrides"] if o.startswith("optimizer")] == \
                [o for o in best["overrides"] if o.startswith("optimizer")]
    rows = list(csv.DictReader((folder / "compare.csv").open()))
    assert [row["optimizer"] for row in rows] == ["sgd", "adamw"]
    assert all(row["trials"] == "2" and row["seeds"] == "2" for row in rows)
    assert (folder / "report" / "report.html").is_file()
    # Each optimizer's seed runs share one LR: an LR-sensitivity table of them would be one LR a
    # row with robustness 0, measuring nothing. The report of the seed runs has none.
    assert "LR sensitivity" not in result.stdout
    assert "<h2>LR sensitivity</h2>" not in (folder / "report" / "report.html").read_text()
    assert not (folder / "report" / "lr_sensitivity.png").exists()
    assert report([str(folder)]) == 0  # `optbench report` on the compare folder works too
