"""`optbench bench` through the real CLI: a small parameter set, the table and the CSV."""

from __future__ import annotations

import csv

import pytest

from conftest import run_cli


def test_bench_writes_times_and_state_bytes(workdir):
    out = workdir / "bench.csv"
    result = run_cli("bench", "optimizers=sgd,adafactor,adam8bit", "params=70000", "width=128",
                     "repeats=2", "warmup=1", "--csv", str(out), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "x fused AdamW" in result.stdout
    rows = {(r["optimizer"], r["implementation"]): r for r in csv.DictReader(out.open())}
    # Two float32 moments, plus a 4-byte step counter per tensor.
    assert float(rows[("adamw (baseline)", "torch fused")]["state_bytes_per_param"]) == pytest.approx(8.0, abs=0.01)
    assert float(rows[("sgd momentum (baseline)", "torch fused")]["state_bytes_per_param"]) == 4.0
    assert float(rows[("sgd", "torch")]["state_bytes_per_param"]) == 0.0
    # Adafactor keeps row and column statistics of each matrix: far below a full second moment.
    assert float(rows[("adafactor", "torch")]["state_bytes_per_param"]) < 0.5
    if ("adam8bit", "bitsandbytes") in rows:  # 8-bit moments; small vectors stay 32-bit
        assert float(rows[("adam8bit", "bitsandbytes")]["state_bytes_per_param"]) < 2.5
    assert all(float(r["step_ms"]) > 0 for r in rows.values())


def test_bench_bad_input_exits_2(workdir):
    result = run_cli("bench", "optimizers=adamx", cwd=workdir)
    assert result.returncode == 2
    assert "optimizers=adamx" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("bench", "repeats=0", cwd=workdir)
    assert result.returncode == 2 and "repeats=0" in result.stderr
