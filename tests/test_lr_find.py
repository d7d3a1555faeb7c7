"""`optbench lr-find`: the range test's sweep, its stop on divergence, the restore, bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from optbench.cli import main
from optbench.config import job_config
from optbench.commands.lr_find import RangeTest, range_test
from optbench.trainer import Trainer

from tests.conftest import TINY


class NanModel(torch.nn.Module):
    """A classifier whose every output is NaN: no LR can be tested on it."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.linear = torch.nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * math.nan


def test_range_test_sweeps_exponentially_stops_on_divergence_and_restores(tmp_path: Path) -> None:
    trainer = Trainer(job_config(["optimizer=momentum", *TINY]), tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = range_test(trainer, 1e-2, 1e6, 16, smoothing=0.5)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))  # a geometric sequence
    assert len(result.lrs) < 16  # LR 1e6 on SGD-momentum blows up before the end of the sweep
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.optimizer.state_dict()["state"] == {}  # momentum buffers gone with the restore
    assert result.lrs[0] <= result.steepest() <= result.lrs[-1]


def test_suggestions_read_the_curve() -> None:
    lrs = [10.0 ** e for e in range(-6, 2)]
    losses = [2.3, 2.3, 2.29, 2.2, 1.5, 1.2, 1.1, 1.4]  # falls fastest from 1e-3 to 1e-1
    result = RangeTest(lrs, losses)
    assert result.steepest() == 1e-2
    assert result.valley() == pytest.approx(1.0 / 10)  # the lowest loss is at LR 1


def test_lr_find_cli_writes_png_csv_and_the_override(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lrf"
    assert main(["lr-find", "optimizer=sgd", *TINY, "--steps", "12", "--end", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    suggested = float(printed.split("optimizer.lr=")[1].split()[0])
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert 3 <= len(rows) <= 12 and float(rows[0]["lr"]) == 1e-7
    assert float(rows[0]["lr"]) <= suggested <= float(rows[-1]["lr"])
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_lr_find_with_a_nan_loss_from_the_first_step_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["lr-find", "model._target_=tests.test_lr_find.NanModel", "~model.hidden", "~model.dropout",
                 "~model.batch_norm",
                 *TINY, "--steps", "6", "--out", str(tmp_path)])
    assert code == 2
    assert "from the first step" in capsys.readouterr().err
    assert main(["lr-find", "--start", "1", "--end", "0.1"]) == 2


def test_steepest_descent_leaves_out_the_last_points_where_the_smoothed_loss_lags() -> None:
    # A slow fall, then the smoothed loss still falling steeply in the last 5 points (the raw loss
    # there already climbs, which is why the test stopped): the chapter's plot skips them, so do we.
    from optbench.commands.lr_find import SKIP_END

    lrs = [10 ** (-7 + 0.2 * i) for i in range(30)]
    losses = [2.3 - 0.01 * i for i in range(30)]
    losses[12] -= 0.05  # the steepest fall inside the kept range: between points 11 and 13
    for k in range(1, SKIP_END + 1):
        losses[-k] = 1.0 - 0.2 * (SKIP_END - k)  # steeper still, but in the skipped end
    assert RangeTest(lrs, losses).steepest() == lrs[11]  # with the end kept: lrs[24], at the cliff
