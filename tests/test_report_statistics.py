"""`optbench report` on runs from several sweeps (issue 15): runs compared by the values they ran
with, a ranked table with unique names, figures whose lines, scales, colours and legends show
every group, paired tests that give no verdict they cannot support, and no library warnings."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest

from optbench.cli import main
from optbench.commands.report import (MIN_SEEDS, at_best_lr, draw_figures, lr_sensitivity, paired_comparisons,
                                      write_report)
from optbench.finished_runs import RankingMetric, find_runs, label, varied_keys
from test_report import fake_run

ACC = RankingMetric("val/acc", maximize=True)
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.1, "adamw": 0.001}  # the optimizers' YAML defaults


def job(folder: Path, optimizer: str, seed: int, acc: float, lr: float | None = None, extra: tuple[str, ...] = (),
        optimizer_settings: dict | None = None) -> None:
    """A job as a sweep writes it: `optimizer.lr` in its overrides only where the command gave it,
    the resolved LR (given or the optimizer's default) in its config."""
    overrides = [f"optimizer={optimizer}", *([f"optimizer.lr={lr}"] if lr is not None else []), *extra,
                 f"trainer.seed={seed}"]
    config = {"optimizer": {"lr": DEFAULT_LR[optimizer] if lr is None else lr, **(optimizer_settings or {})},
              "trainer": {"seed": seed}}
    fake_run(folder, overrides, acc, config=config, choices={"optimizer": optimizer, "model": "mlp", "data": "digits"})


def two_sweeps(root: Path) -> list[Path]:
    """The issue's reproduction: sweep a runs sgd and adamw at their default LRs; sweep b runs
    momentum and adamw at two LRs each; both with seeds 0 and 1, jobs numbered from 0 in each."""
    a, b = root / "a", root / "b"
    for i, (optimizer, seed, acc) in enumerate([("sgd", 0, 0.68), ("sgd", 1, 0.66), ("adamw", 0, 0.76),
                                                ("adamw", 1, 0.81)]):
        job(a / str(i), optimizer, seed, acc)
    for i, (optimizer, lr, seed, acc) in enumerate([
            ("momentum", 0.001, 0, 0.20), ("momentum", 0.001, 1, 0.16), ("momentum", 0.1, 0, 0.947),
            ("momentum", 0.1, 1, 0.944), ("adamw", 0.001, 0, 0.908), ("adamw", 0.001, 1, 0.905),
            ("adamw", 0.1, 0, 0.56), ("adamw", 0.1, 1, 0.35)]):
        job(b / str(i), optimizer, seed, acc, lr)
    return [a, b]


def test_report_of_sweeps_where_only_some_vary_the_lr(tmp_path: Path) -> None:
    """Was KeyError: 'optimizer.lr' (`optbench report A B`, and `optbench report outputs`)."""
    out = tmp_path / "report"
    assert main(["report", *map(str, two_sweeps(tmp_path)), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "report.csv").open()))
    sweep_a_lrs = {(r["optimizer"], r["optimizer.lr"]) for r in rows if r["run"].startswith("a/")}
    assert sweep_a_lrs == {("sgd", "0.1"), ("adamw", "0.001")}  # the defaults, from the resolved config
    runs = find_runs([tmp_path / "a", tmp_path / "b"])
    curves = {c.group: c.lrs for c in lr_sensitivity(runs, varied_keys(runs), ACC)}
    # Sweep a's adamw ran at adamw's default LR, so it joins sweep b's adamw at that LR.
    assert curves == {"optimizer=momentum": [0.001, 0.1], "optimizer=adamw": [0.001, 0.1]}


def test_runs_table_is_ranked_with_unique_run_names(tmp_path: Path) -> None:
    for root, accs in (("a", [0.5, 0.9, 0.7]), ("b", [0.8, 0.6])):
        for i, acc in enumerate(accs):
            job(tmp_path / root / str(i), "sgd", i, acc, lr=0.1)
    fake_run(tmp_path / "a" / "3", ["optimizer=sgd", "optimizer.lr=0.1", "trainer.seed=3"], 0.0, status="failed")
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["run"] for r in rows] == ["a/1", "b/0", "a/2", "b/1", "a/0", "a/3"]  # the failed run last
    assert [r["best val/acc"] for r in rows] == ["0.9", "0.8", "0.7", "0.6", "0.5", "nan"]
    assert "Rows of the runs table are ordered by best <code>val/acc</code>, highest first" in (out / "report.html").read_text()


def test_varied_keys_compare_resolved_values_not_override_strings(tmp_path: Path) -> None:
    # One sweep names the model and data and spells a bool as Hydra's sweeper writes it (`False`);
    # the other leaves model and data at their defaults, writes `false`, and shows its progress
    # bar (which changes no result). Only the optimizer varies.
    job(tmp_path / "a" / "0", "sgd", 0, 0.5,
        extra=("model=mlp", "data=digits", "trainer.deterministic=False", "trainer.progress=False"))
    job(tmp_path / "b" / "0", "adamw", 0, 0.6, extra=("trainer.deterministic=false", "trainer.progress=true"))
    assert varied_keys(find_runs([tmp_path])) == ["optimizer"]


def test_labels_leave_out_settings_that_a_run_does_not_have(tmp_path: Path) -> None:
    job(tmp_path / "0", "sgd", 0, 0.5, lr=0.1)
    job(tmp_path / "1", "adamw", 0, 0.6, lr=0.1, extra=("optimizer.betas.0=0.95",),
        optimizer_settings={"betas": [0.95, 0.999]})
    runs = find_runs([tmp_path])
    keys = varied_keys(runs)
    assert keys == ["optimizer", "optimizer.betas.0"]
    assert [label(run, keys) for run in runs] == ["optimizer=sgd", "optimizer=adamw optimizer.betas.0=0.95"]


def figures_of(roots: list[Path]) -> dict:
    runs = find_runs(roots)
    keys = varied_keys(runs)
    return draw_figures(runs, keys, ACC, lr_sensitivity(runs, keys, ACC), None)


def test_lr_panel_shows_every_group_on_a_log_scale_when_lrs_differ_by_decades(tmp_path: Path) -> None:
    lr_panel = figures_of(two_sweeps(tmp_path)[1:])["curves.png"].axes[2]
    assert lr_panel.get_title() == "learning rate" and lr_panel.get_yscale() == "log"
    lines = {line.get_label().removesuffix(" (2 seeds)"): line for line in lr_panel.get_lines()}
    assert len(lines) == 4
    # momentum and adamw at LR 0.1 have one LR curve; the one drawn first is wider, so it shows.
    below, above = lines["optimizer=momentum optimizer.lr=0.1"], lines["optimizer=adamw optimizer.lr=0.1"]
    assert list(below.get_ydata()) == list(above.get_ydata())
    assert below.get_linewidth() > above.get_linewidth() + 2


def test_lr_panel_is_linear_when_lrs_are_within_a_decade(tmp_path: Path) -> None:
    for i, lr in enumerate([0.1, 0.3]):
        job(tmp_path / str(i), "sgd", 0, 0.5, lr=lr)
    assert figures_of([tmp_path])["curves.png"].axes[2].get_yscale() == "linear"


def test_an_optimizer_has_one_colour_in_every_figure(tmp_path: Path) -> None:
    figures = figures_of(two_sweeps(tmp_path)[1:])
    sensitivity = {line.get_label(): line.get_color() for line in figures["lr_sensitivity.png"].axes[0].get_lines()
                   if not line.get_label().startswith("_")}
    curves = figures["curves.png"].axes[0].get_lines()
    for group, colour in sensitivity.items():
        mine = [line for line in curves if line.get_label().startswith(f"{group} optimizer.lr=")]
        assert len(mine) == 2 and {line.get_color() for line in mine} == {colour}, group
        assert len({line.get_linestyle() for line in mine}) == 2  # its LRs told apart by line style
    assert len(set(sensitivity.values())) == 2


def test_legend_of_long_labels_fits_inside_the_figure(tmp_path: Path) -> None:
    """The compare report's labels: every searched key of each optimizer's best trial."""
    for i, (optimizer, settings) in enumerate([
            ("sgd", ["optimizer.lr=0.7442", "optimizer.weight_decay=2.554e-05", "optimizer.momentum=0.9183"]),
            ("adamw", ["optimizer.lr=0.007442", "optimizer.weight_decay=0.0002554", "optimizer.betas.0=0.8406",
                       "optimizer.betas.1=0.9735", "optimizer.eps=1.234e-08"]),
            ("momentum", ["optimizer.lr=0.02442", "optimizer.weight_decay=0.002554", "optimizer.momentum=0.9383"])]):
        for seed in (1, 2):
            fake_run(tmp_path / f"{i}{seed}", [f"optimizer={optimizer}", *settings, f"trainer.seed={seed}"], 0.5)
    figure = figures_of([tmp_path])["curves.png"]
    figure.canvas.draw()
    (legend,) = figure.legends
    box = legend.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width
    assert len(legend.get_texts()) == 3


@pytest.mark.parametrize("seeds", [2, MIN_SEEDS])
def test_no_verdict_without_enough_seeds_or_spread_and_no_library_warnings(tmp_path: Path, seeds: int) -> None:
    # The numbers: momentum beats adamw by the same 0.039 on every seed (to rounding).
    for seed in range(seeds):
        job(tmp_path / "momentum" / str(seed), "momentum", seed, 0.9471 - 0.0028 * seed)
        job(tmp_path / "adamw" / str(seed), "adamw", seed, 0.9081 - 0.0028 * seed)
    runs = find_runs([tmp_path])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (tmp_path / "report").mkdir()
        write_report(runs, tmp_path / "report")
        (row,) = paired_comparisons(runs, ["optimizer", "trainer.seed"], ACC)[1]
    assert caught == []
    assert row[2] == seeds and row[4] == ""  # no p-value
    assert row[5] == (f"no verdict: 2 seeds, a verdict needs {MIN_SEEDS}" if seeds < MIN_SEEDS else
                      "no verdict: the same difference on every seed, so the t-test has no spread to judge")


def test_verdicts_from_enough_seeds_with_spread(tmp_path: Path) -> None:
    for seed, (a, b) in enumerate([(0.90, 0.80), (0.93, 0.81), (0.91, 0.79)]):
        job(tmp_path / "sgd" / str(seed), "sgd", seed, a)
        job(tmp_path / "adamw" / str(seed), "adamw", seed, b)
    runs = find_runs([tmp_path])
    ((_, _, n, mean, p, verdict),) = paired_comparisons(runs, ["optimizer", "trainer.seed"], ACC)[1]
    assert (n, mean, verdict) == (3, -0.1133, "optimizer=sgd better") and 0 < float(p) < 0.05  # A is adamw


def test_one_lr_per_optimizer_has_no_lr_sensitivity(tmp_path: Path) -> None:
    """`optbench compare`'s seed runs: each optimizer's best trial, at its one LR, over seeds."""
    for seed in (1, 2, 3):
        job(tmp_path / f"sgd{seed}", "sgd", seed, 0.8 + seed / 100, lr=0.7442)
        job(tmp_path / f"adamw{seed}", "adamw", seed, 0.9 - seed / 100, lr=0.007442)
    runs = find_runs([tmp_path])
    keys = varied_keys(runs)
    assert "optimizer.lr" in keys and lr_sensitivity(runs, keys, ACC) == []
    assert at_best_lr(runs, ["optimizer", "trainer.seed"], [], ACC) == runs
    out = tmp_path / "report"
    out.mkdir()
    write_report(runs, out)
    assert not (out / "lr_sensitivity.png").exists() and "LR sensitivity" not in (out / "report.html").read_text()
    assert "Paired comparisons over seeds" in (out / "report.html").read_text()
