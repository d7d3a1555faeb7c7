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


def test_run_m_with_cfg_shows_the_one_run_or_says_why_not(workdir, monkeypatch, capsys):
    """Hydra refuses --cfg and --info with --multirun (a ValueError): optbench shows the run that
    -m's overrides name, and refuses overrides that sweep, with exit status 2."""
    from optbench.commands.run import run

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "argv", sys.argv)  # run() hands Hydra its arguments through sys.argv
    assert run(["-m", "hydra/launcher=slurm", "optimizer=sgd", "--cfg", "hydra"]) == 0
    assert "_target_: hydra_plugins.optbench_slurm_launcher.slurm_launcher.SlurmLauncher" in capsys.readouterr().out

    assert run(["-m", "optimizer=sgd,adamw", "trainer.seed=1", "--cfg", "hydra"]) == 2
    message = capsys.readouterr().err
    assert "--cfg hydra with -m: optimizer=sgd,adamw sweep over several runs" in message
    assert "(optimizer=sgd)" in message and "Traceback" not in message
    assert not (workdir / "outputs").exists()  # showing runs nothing


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`optbench list | head -1`: the reader goes away; no traceback."""
    import subprocess
    import sys

    result = subprocess.run(f"'{sys.executable}' -m optbench list | head -1", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("models (model=NAME):")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
