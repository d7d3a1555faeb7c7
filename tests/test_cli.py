"""The `optbench` command itself: help, list, reserved commands, and that it stays light."""

from __future__ import annotations

import subprocess
import sys

from conftest import run_cli


def test_help_and_list_do_not_import_torch():
    # `optbench --help` and `optbench list` must answer at once: torch is imported lazily.
    code = (
        "import sys, io, contextlib\n"
        "from optbench.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0 and main(['list']) == 0\n"
        "heavy = [m for m in ('torch', 'hydra', 'omegaconf', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_contract_command(workdir):
    result = run_cli("--help", cwd=workdir)
    assert result.returncode == 0
    for command in ("run", "lr-find", "schedules", "toy", "compare", "report", "check", "bench", "list"):
        assert f"  {command} " in result.stdout


def test_every_listed_command_has_a_handler():
    from optbench.cli import COMMANDS, HANDLERS

    assert set(HANDLERS) == set(COMMANDS)


def test_list_shows_each_option_with_its_description(workdir):
    result = run_cli("list", "optimizers", cwd=workdir)
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    for name in ("sgd", "momentum", "nesterov", "adam", "adamw"):
        assert name in lines and len(lines[name].split()) > 3, lines
    assert "recipes (recipe=NAME):" in run_cli("list", cwd=workdir).stdout


def test_list_unknown_topic_is_bad_input(workdir):
    result = run_cli("list", "gizmos", cwd=workdir)
    assert result.returncode == 2
    assert "gizmos" in result.stderr and "optimizers" in result.stderr


def test_unknown_command_is_bad_input(workdir):
    result = run_cli("trian", cwd=workdir)
    assert result.returncode == 2
    assert "'trian'" in result.stderr and "Traceback" not in result.stderr


def test_run_help_and_cfg_job_work_as_in_any_hydra_app(workdir):
    helped = run_cli("run", "--help", cwd=workdir)
    assert helped.returncode == 0
    assert "optimizer: adafactor, adagrad, adam, adam8bit" in helped.stdout  # Hydra's list of groups
    cfg = run_cli("run", "--cfg", "job", "optimizer=nesterov", "optimizer.lr=0.3", cwd=workdir)
    assert cfg.returncode == 0
    assert "nesterov: true" in cfg.stdout and "lr: 0.3" in cfg.stdout
    assert not (workdir / "outputs").exists()  # printing the config runs nothing
