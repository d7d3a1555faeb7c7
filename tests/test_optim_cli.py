"""Bad optimizer input through the real CLI: exit status 2, a message naming the key, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli

CASES = {
    "unknown optimizer": (["optimizer=adamx"], "optimizer=adamx"),
    "beta of 1": (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas"),
    "negative beta, optbench's Lion": (["optimizer=lion", "optimizer.betas=[-0.1,0.99]"], "optimizer.betas"),
    "negative lr": (["optimizer=lamb", "optimizer.lr=-0.001"], "optimizer.lr=-0.001"),
    "negative eps": (["optimizer=adamw", "optimizer.eps=-1e-8"], "optimizer.eps"),
    "negative weight_decay": (["optimizer=lion", "optimizer.weight_decay=-0.1"], "optimizer.weight_decay"),
    "lookahead without inner": (["optimizer=lookahead"], "optimizer.inner"),
    "bad inner optimizer": (["optimizer=lookahead", "optimizer@optimizer.inner=sophia",
                             "optimizer.inner.rho=-1"], "optimizer.inner.rho"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_optimizer_input_exits_2_naming_the_key(case, workdir):
    overrides, key = CASES[case]
    result = run_cli("run", *overrides, "trainer.max_steps=1", cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "outputs").exists()  # refused before any run folder


def test_8bit_without_bitsandbytes(workdir: Path):
    # A bitsandbytes that cannot be imported, first on the path: as on a machine without it.
    fake = workdir / "fake_site" / "bitsandbytes"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'bitsandbytes'\", name='bitsandbytes')\n")
    env = {"PYTHONPATH": f"{fake.parent}:{Path(__file__).resolve().parents[1]}"}
    result = run_cli("run", "optimizer=adam8bit", "trainer.max_steps=1", cwd=workdir, env=env)
    assert result.returncode == 2, result.stderr
    assert "optimizer._target_=bitsandbytes.optim.Adam8bit" in result.stderr
    assert "pip install 'bitsandbytes>=0.50'" in result.stderr
    assert "Traceback" not in result.stderr
