"""`optbench report`: run folders found, the table, CSV, PNGs and HTML, the analyses' verdicts."""

from __future__ import annotations

import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from optbench.cli import main
from optbench.commands.report import lr_sensitivity, paired_comparisons
from optbench.finished_runs import RankingMetric, find_runs, varied_keys

ACC = RankingMetric("val/acc", maximize=True)


def fake_run(folder: Path, overrides: list[str], best_acc: float, status: str = "completed", steps: int = 4,
             config: dict | None = None, choices: dict | None = None) -> Path:
    """A run folder as `optbench run` writes it (the contract's files), with chosen numbers; `config`
    is the resolved config beside the monitor (its optimizer.lr the LR curve's peak), `choices`
    Hydra's runtime.choices."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if choices:
        (folder / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"choices": choices}}}))
    peak_lr = (config or {}).get("optimizer", {}).get("lr", 0.1)
    lines = []
    for step in range(1, steps + 1):
        lines.append({"step": step, "epoch": step / 10, "time": step * 0.1, "split": "train",
                      "loss": 2.0 / step, "lr": peak_lr / step, "grad_norm": 1.0 + step})
        lines.append({"step": step, "epoch": step / 10, "time": step * 0.1, "split": "val",
                      "loss": 2.0 / step, "acc": best_acc * step / steps})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = {"status": status, "steps": steps, "samples_per_s": 100.0, "optimizer_state_bytes": 2**20,
               "final": {"train/loss": 0.5, "val/acc": best_acc}, "best": {"val/acc": best_acc},
               "config": {**(config or {}), "trainer": {"monitor": "acc", "monitor_mode": "max",
                                                         **(config or {}).get("trainer", {})}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def sweep(root: Path, accs: dict[tuple[str, float], list[float]]) -> Path:
    """A multirun folder: one job per (optimizer, lr, seed), seed i scoring accs[(opt, lr)][i]."""
    job = 0
    for (optimizer, lr), values in accs.items():
        for seed, acc in enumerate(values):
            fake_run(root / str(job), [f"optimizer={optimizer}", f"optimizer.lr={lr}", f"trainer.seed={seed}"], acc)
            job += 1
    return root


def test_report_writes_table_csv_pngs_and_self_contained_html(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = sweep(tmp_path / "sw", {("sgd", 0.01): [0.5, 0.52], ("sgd", 0.1): [0.8, 0.81],
                                   ("adamw", 0.001): [0.9, 0.93], ("adamw", 0.01): [0.3, 0.2]})
    fake_run(tmp_path / "sw" / "8", ["optimizer=adamw", "optimizer.lr=1.0", "trainer.seed=0"], 0.0, status="diverged")
    out = tmp_path / "rep"
    assert main(["report", str(root), "--out", str(out), "--target", "0.6"]) == 0
    printed = capsys.readouterr().out
    assert "Paired comparisons" in printed and "LR sensitivity" in printed

    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 9
    assert [r["status"] for r in rows].count("diverged") == 1
    assert {"optimizer", "optimizer.lr", "trainer.seed"} <= set(rows[0])
    assert rows[3]["best val/acc"] == "0.8" and rows[3]["steps to target"] == "3"  # 0.8*3/4 >= 0.6
    assert rows[5]["best val/acc"] == "0.5" and rows[5]["steps to target"] == ""  # never reaches 0.6
    for name in ("curves.png", "lr_sensitivity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    class Structure(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.sources: list[str] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags.append(tag)
            self.sources += [v for k, v in attrs if k == "src"]

    page = Structure()
    page.feed((out / "report.html").read_text())
    # The settings all runs share, then the three result tables (these fake runs record no provenance).
    assert page.tags.count("table") == 4 and page.tags.count("img") == 2
    assert all(src.startswith("data:image/png;base64,") for src in page.sources)  # nothing outside the file


def test_report_on_a_folder_without_runs_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no runs found" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_varied_keys_leave_out_what_all_runs_share(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", ["optimizer=sgd", "trainer.max_steps=6", "trainer.seed=0"], 0.5)
    fake_run(tmp_path / "b", ["optimizer=sgd", "trainer.max_steps=6", "trainer.seed=1"], 0.6)
    fake_run(tmp_path / "c", ["optimizer=lion", "trainer.max_steps=6"], 0.6)
    assert varied_keys(find_runs([tmp_path])) == ["optimizer", "trainer.seed"]


def test_robustness_is_the_contiguous_lr_range_within_5_percent_of_the_best(tmp_path: Path) -> None:
    root = sweep(tmp_path, {("sgd", 0.001): [0.5], ("sgd", 0.01): [0.88], ("sgd", 0.1): [0.9],
                            ("sgd", 1.0): [0.84], ("sgd", 10.0): [0.89]})  # 1.0 breaks the range
    runs = find_runs([root])
    (curve,) = lr_sensitivity(runs, varied_keys(runs), ACC)
    assert curve.best_lr(True) == 0.1
    assert curve.robust_range(True) == (0.01, 0.1)


def test_paired_comparison_says_when_optimizers_are_not_distinguishable(tmp_path: Path) -> None:
    close = sweep(tmp_path / "close", {("sgd", 0.1): [0.80, 0.85, 0.78, 0.83], ("lion", 0.1): [0.82, 0.80, 0.81, 0.84]})
    apart = sweep(tmp_path / "apart", {("sgd", 0.1): [0.80, 0.85, 0.78, 0.83], ("lion", 0.1): [0.90, 0.96, 0.88, 0.93]})
    for root, verdict in ((close, "not distinguishable"), (apart, "optimizer=lion better")):
        runs = find_runs([root])
        _, rows = paired_comparisons(runs, [k for k in varied_keys(runs) if k != "optimizer.lr"], ACC)
        assert len(rows) == 1 and rows[0][2] == 4
        assert rows[0][-1] == verdict


def test_report_on_real_runs(tmp_path: Path) -> None:
    """Two real tiny runs (in-process Trainer) read back: the contract's files are what report reads."""
    from optbench.config import job_config
    from optbench.trainer import Trainer

    from tests.conftest import TINY

    for optimizer in ("sgd", "adamw"):  # model=mlp: the 2x256 MLP, on which AdamW leads after 6 steps
        overrides = [f"optimizer={optimizer}", "model=mlp", *TINY, "trainer.tensorboard=false"]
        run_dir = tmp_path / optimizer
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        Trainer(job_config(overrides), run_dir).fit()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    rows = list(csv.DictReader((tmp_path / "rep" / "report.csv").open()))
    assert [r["optimizer"] for r in rows] == ["adamw", "sgd"]
    assert all(r["status"] == "completed" and r["steps"] == "6" for r in rows)
    assert float(rows[0]["optimizer state (MiB)"]) > 0 == float(rows[1]["optimizer state (MiB)"])
    assert all(math.isfinite(float(r["best val/acc"])) for r in rows)
    assert re.search(r"<td>adamw</td>", (tmp_path / "rep" / "report.html").read_text())


def test_curve_legend_counts_seeds_not_runs(tmp_path: Path) -> None:
    """A legend entry names its configuration and how many seeds its line averages: the same seed
    run twice is two runs of one seed, not two seeds."""
    from optbench.commands.report import draw_figures

    for name, optimizer, seed in [("a", "sgd", 0), ("b", "sgd", 0), ("c", "sgd", 1), ("d", "adamw", 0),
                                  ("e", "adamw", 1), ("f", "lion", 0)]:
        fake_run(tmp_path / name, [f"optimizer={optimizer}", f"trainer.seed={seed}"], 0.5)
    runs = find_runs([tmp_path])
    figure = draw_figures(runs, varied_keys(runs), ACC, [], None)["curves.png"]
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "optimizer=sgd (3 runs, 2 seeds)", "optimizer=adamw (2 seeds)", "optimizer=lion"]
