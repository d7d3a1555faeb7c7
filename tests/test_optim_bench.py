"""`optbench bench` through the real CLI: a small parameter set, the table and the CSV."""

from __future__ import annotations

import csv
import math

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
        eight_bit = rows[("adam8bit", "bitsandbytes")]
        assert float(eight_bit["state_bytes_per_param"]) < 2.5
        # Its step time beside fused AdamW's is said under the table, as measured.
        adamw_state = float(rows[("adamw (baseline)", "torch fused")]["state_bytes_per_param"])
        assert (f"note: adam8bit (bitsandbytes): a step takes {float(eight_bit['vs_fused_adamw'])}x as long as "
                f"fused AdamW's on this CPU, for {float(eight_bit['state_bytes_per_param'])} instead of "
                f"{adamw_state} state bytes per parameter.") in result.stdout
    else:
        assert "note: adam8bit: not installed" in result.stdout
    assert all(float(r["step_ms"]) > 0 for r in rows.values())


def test_bench_names_every_optimizer_it_leaves_out_with_why(monkeypatch):
    from optbench.commands import bench
    from optbench.paths import configs_dir

    names, skipped = bench.chosen(None)
    assert sorted([*names, *skipped]) == sorted(p.stem for p in (configs_dir() / "optimizer").glob("*.yaml"))
    assert "muon" in skipped and "minutes" in skipped["muon"] and "optimizers=muon" in skipped["muon"]
    assert bench.chosen(["sgd", "muon"]) == (["sgd", "muon"], {})  # named: none left out

    # A reference library that is not installed is named too, not passed over.
    monkeypatch.setitem(bench.REFERENCES, "sgd", [("nolib", "no_such_library.SGD")])
    found = bench.candidates(["sgd"], bench.parameter_set(100, 4), skipped)
    assert [(c.name, c.implementation) for c in found][2:] == [("sgd", "torch")]
    table = [{"optimizer": c.name, "implementation": c.implementation, "vs_fused_adamw": 1.0,
              "state_bytes_per_param": 0.0} for c in found]
    lines = bench.notes(table, skipped)
    assert any(line.startswith("muon: left out by default") for line in lines)
    assert any(line.startswith("sgd (nolib): not installed") and "no_such_library" in line for line in lines)


def test_bench_bad_input_exits_2(workdir):
    result = run_cli("bench", "optimizers=adamx", cwd=workdir)
    assert result.returncode == 2
    assert "optimizers=adamx" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("bench", "repeats=0", cwd=workdir)
    assert result.returncode == 2 and "repeats=0" in result.stderr


def test_bench_shape_presets_are_real_models_and_report_min_and_median(workdir):
    from optbench.commands import bench

    # torchvision's models on the meta device: their real tensor shapes, no memory.
    resnet = [math.prod(s) for s in bench.preset_shapes("resnet50", 0, 0)]
    assert (len(resnet), min(resnet), max(resnet), sum(resnet)) == (161, 64, 2359296, 25557032)
    vit = [math.prod(s) for s in bench.preset_shapes("vit_b_16", 0, 0)]
    assert (len(vit), sum(vit)) == (152, 86567656)
    assert bench.preset_shapes("huge", 0, 0) == [(4096, 4096)] * 4

    out = workdir / "tiny.csv"
    result = run_cli("bench", "shape=tiny", "optimizers=lion,sophia", "threads=1", "repeats=2", "warmup=1",
                     "--csv", str(out), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "2000 tensors, shape=tiny" in result.stdout and "1 threads" in result.stdout
    rows = {(r["optimizer"], r["implementation"]): r for r in csv.DictReader(out.open())}
    for row in rows.values():
        assert 0 < float(row["step_ms_min"]) <= float(row["step_ms"])
    lion = rows[("lion", "optbench")]
    # Each optimizer's goal under the table, with the ratios of the minimum and the median.
    assert (f"goal: lion <= 1.2x sgd momentum: {float(lion['vs_fused_sgd_momentum_min'])}x (min), "
            f"{float(lion['vs_fused_sgd_momentum'])}x (median)") in result.stdout
    assert "goal: sophia <= 1.6x adamw: " in result.stdout


def test_bench_refuses_a_setting_the_shape_would_ignore(workdir):
    result = run_cli("bench", "shape=resnet50", "width=64", cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "width=64" in result.stderr and "shape=resnet50" in result.stderr and "shape=blocks" in result.stderr
    result = run_cli("bench", "shape=bert", cwd=workdir)
    assert result.returncode == 2 and "shape=bert" in result.stderr and "vit_b_16" in result.stderr
