"""optbench installed from a wheel finds its configs and recipes from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import TINY, read_summary, run_dirs

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_configs_and_runs_from_any_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(dist), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = dist.glob("optbench-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    assert (site / "optbench" / "_configs" / "train.yaml").is_file()
    assert (site / "optbench" / "_configs" / "optimizer" / "adamw.yaml").is_file()
    assert (site / "optbench" / "_recipes" / "digits_resnet20.yaml").is_file()
    assert (site / "optbench" / "optim" / "kernels.c").is_file()  # LAMB's, LARS's and Lion's C kernels
    assert (site / "optbench" / "optim" / "kernels_step.h").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import optbench.paths as p; print(p.configs_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()) == site / "optbench" / "_configs"
    if shutil.which(os.environ.get("CC", "cc")):  # the installed sources build into the cache folder
        subprocess.run([sys.executable, "-c", "from optbench.optim import native; assert native.library()"],
                       cwd=elsewhere, env={**env, "OPTBENCH_CACHE": str(tmp_path / "cache")}, check=True)
        assert len(list((tmp_path / "cache").glob("kernels-*.so"))) == 1

    result = subprocess.run(
        [sys.executable, "-m", "optbench", "run", "recipe=digits_resnet20", *TINY],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(elsewhere / "outputs")
    assert read_summary(run_dir)["config"]["model"]["depth"] == 20
