"""Every benchmark runs at smoke size, so that none can rot while nobody runs it at full size.

These check that each script runs to its end and prints its ratio against the baseline it
measures side by side; the figures themselves are the scripts' business (README), not a test's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# Each script with arguments that make it tiny, and a line its output must end with.
SMOKE = {
    "overhead.py": (["--steps", "3", "--repeats", "1", "--threads", "1"],  # optbench's per-step ratio last
                    r"fixed costs per run[\s\S]*paired step by step in one run \(2 steps\): .*: \d+\.\d+; "
                    r"median of the pairs' ratios \d+\.\d+; means "
                    r"\d+\.\d+; the trainer's step minus the plain one: median -?\d+ us, mean -?\d+ us\s+"
                    r"(overhead ratio \(Lightning / plain.*\s+)?"  # the third arm, when installed
                    r"overhead ratio \(optbench Trainer / plain, per step\): "
                    r"\d+\.\d+ wall clock.*\d+\.\d+ CPU time.*\s*\Z"),
    "tricks_cost.py": (["--steps", "3", "--repeats", "1", "--threads", "1"], r"ema / baseline: \d+\.\d+"),
    "throughput.py": (["--steps", "3", "--repeats", "1", "--only", "counting_gru", "gan_ring", "digits_vit"],
                      r"gan_ring\s+[\d,]+\s+[\d,]+\s+\d+\.\d+"),
    "soak.py": (["--runs", "2", "--faults", "none", "bad", "--steps", "20"], r"wrong outcomes: 0"),
    "startup.py": (["--repeats", "1", "--also-run", "model=mlp"],  # the run before issue 17's model, beside it
                   r"optbench run model=mlp held-out accuracy: 0\.\d+[\s\S]*default run / optbench run model=mlp: "
                   r"\d+\.\d+\s+default run / bare import: \d+\.\d+"),
}


def test_every_benchmark_has_a_smoke_run():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - {"gpu_check.py"}  # tests/test_gpu_check.py runs that one
    assert scripts == set(SMOKE)


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_at_smoke_size(script, tmp_path):
    args, last = SMOKE[script]
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(last, result.stdout), result.stdout[-2000:]
