"""The large-batch claims of `optbench reproduce` (4, 14, 15): claim 4's rule on constructed runs, held
and not held; claim 14's weight gap, and the float64 identity it checks through the batching configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from optbench.commands.reproduce import large_batch as lb
from optbench.finished_runs import Run

SMALL, LARGE = lb.SMALL, lb.LARGE


def run(optimizer: str, batch: int, seed: int, acc: float, status: str = "completed") -> Run:
    summary = {"status": status, "final": {"val/acc": acc},
               "config": {"data": {"batch_size": batch}, "trainer": {"seed": seed}}}
    return Run(Path(f"/runs/{optimizer}_{batch}_{seed}"), {}, summary, [], choices={"optimizer": optimizer})


def runs_of(accuracy: dict[str, dict[int, list[float]]]) -> list[Run]:
    return [run(name, batch, seed, acc) for name, by_batch in accuracy.items()
            for batch, per_seed in by_batch.items() for seed, acc in enumerate(per_seed)]


def test_drops_are_per_seed_small_minus_large_and_the_rule_holds_when_lars_loses_less():
    # Seeds listed out of order: the table puts them back in seed order.
    runs = runs_of({"momentum": {SMALL: [0.97, 0.96, 0.95], LARGE: [0.60, 0.80, 0.30]},
                    "lars": {SMALL: [0.96, 0.96, 0.96], LARGE: [0.95, 0.94, 0.96]}})[::-1]
    table = lb.accuracies(runs)
    assert table["momentum"][LARGE] == [0.60, 0.80, 0.30]
    drops = lb.accuracy_drops(table)
    assert drops["momentum"] == pytest.approx([0.37, 0.16, 0.65])
    assert drops["lars"] == pytest.approx([0.01, 0.02, 0.0])
    assert lb.pair_holds(drops, "momentum", "lars")
    assert not lb.pair_holds(drops, "lars", "momentum")


def test_the_rule_fails_when_one_seed_goes_the_other_way():
    drops = {"adamw": [0.025, 0.023, 0.001], "lamb": [0.01, 0.01, 0.01]}  # seed 2: LAMB loses more
    assert not lb.pair_holds(drops, "adamw", "lamb")
    line = lb.pair_line({"adamw": {SMALL: [0.96] * 3, LARGE: [0.94] * 3}, "lamb": {SMALL: [0.92] * 3,
                                                                             LARGE: [0.91] * 3}},
                        drops, "adamw", "lamb", "0.5")
    assert "not smaller on every seed" in line and "adamw 0.960 -> 0.940 (+2.5/+2.3/+0.1)" in line


def test_a_diverged_large_batch_run_is_the_largest_drop():
    diverged = run("momentum", LARGE, 0, 0.1, status="diverged")
    assert math.isnan(lb.final_accuracy(diverged))
    assert lb.loses_less(0.3, math.nan)  # the base optimizer diverged: any finite drop is smaller
    assert not lb.loses_less(math.nan, 0.3)
    assert not lb.loses_less(math.nan, math.nan)


def test_relative_gap_is_the_distance_over_the_move():
    start = [torch.zeros(2), torch.zeros(1)]
    b = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]  # moved by 5
    a = [torch.tensor([3.0, 0.5]), torch.tensor([4.0])]  # 0.5 away from b
    assert lb.relative_gap(start, a, b) == pytest.approx(0.1)
    assert lb.relative_gap(start, b, b) == 0.0


def test_accumulated_and_direct_batch_end_at_the_same_float64_weights_without_batch_statistics(tmp_path):
    # What claim 14 checks, on a tiny MLP: the batching configs, 2 steps of the large_batch recipe's SGD.
    common = [*lb.PARITY_DATA, "model=mlp", "model.hidden=[8]", "data.input_shape=[4]",
              "data.train_size=2048", "data.val_size=16", "trainer.max_steps=2", "scheduler.warmup=0"]
    ends = {}
    for arm in lb.ARMS:
        start, ends[arm] = lb.float64_weights([*common, f"batching={arm}"], tmp_path / arm)
        assert ends[arm][0].dtype == torch.float64
    gap = lb.relative_gap(start, ends["accumulate_64x16"], ends["direct_1024"])
    assert gap <= lb.PARITY_TOLERANCE
    assert sum(float((e - s).abs().sum()) for s, e in zip(start, ends["direct_1024"])) > 0  # the weights moved


def test_claims_are_declared_without_importing_torch_at_module_level():
    assert [c.number for c in lb.CLAIMS] == [4, 14, 15]
    assert "torch" not in vars(lb) and "plt" not in vars(lb)
