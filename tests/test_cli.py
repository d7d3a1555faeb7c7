"""The `optbench` command itself: help, list, reserved commands, and that it stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli


def test_help_list_and_completion_do_not_import_torch():
    # `optbench --help`, `optbench list` and a TAB must answer at once: torch is imported lazily.
    code = (
        "import sys, io, contextlib\n"
        "from optbench.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0 and main(['list']) == 0\n"
        "    assert main(['__complete', 'bash', 'ad', 'optbench run optimizer=ad']) == 0\n"
        "heavy = [m for m in ('torch', 'hydra', 'omegaconf', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_garbage_collector_is_frozen_at_exit():
    # Python's collections while it tears the modules down took about 0.5 s of every command with
    # torch loaded (issue 17); optbench freezes the collector once the other exit handlers have run.
    code = ("import atexit, gc\n"
            "atexit.register(lambda: print(gc.get_freeze_count() > 0))  # runs last: registered first\n"
            "import optbench.cli\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    # Not in a rank of a data-parallel run: a rank of a 2-process gloo run aborted at exit without them.
    ranked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "WORLD_SIZE": "2"})
    assert ranked.stdout.strip() == "False"


def test_help_lists_every_contract_command(workdir):
    result = run_cli("--help", cwd=workdir)
    assert result.returncode == 0
    for command in ("run", "lr-find", "schedules", "toy", "compare", "report", "check", "bench", "list"):
        assert f"  {command} " in result.stdout


def test_every_listed_command_has_a_handler():
    from optbench.cli import COMMANDS, HANDLERS

    assert set(HANDLERS) == {*COMMANDS, "__complete"}  # and the query that completion scripts run


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
    result = run_cli("reprot", cwd=workdir)
    assert result.returncode == 2 and "unknown command 'reprot'. Did you mean 'report'?" in result.stderr


def test_list_takes_a_group_name_and_suggests_the_closest_topic(workdir):
    singular = run_cli("list", "optimizer", cwd=workdir)
    assert singular.returncode == 0
    assert singular.stdout == run_cli("list", "optimizers", cwd=workdir).stdout
    assert singular.stdout.startswith("optimizers (optimizer=NAME):\n  adafactor ")
    typo = run_cli("list", "optimzers", cwd=workdir)
    assert typo.returncode == 2 and "list optimzers: no such topic. Did you mean 'optimizers'?" in typo.stderr


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


@pytest.mark.parametrize("args, first", [("list", "models (model=NAME):"),
                                         ("list recipes", "recipes (recipe=NAME):"),
                                         ("--help", "usage: optbench COMMAND [OVERRIDES...]")])
def test_output_into_a_closed_pipe_ends_quietly(args, first, tmp_path):
    """`optbench list | head -1`: the reader goes away; no traceback."""
    result = subprocess.run(f"'{sys.executable}' -m optbench {args} | head -1", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout == first + "\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_run_help_lists_groups_from_the_folders_as_hydra_would(workdir, monkeypatch, capsys):
    """`run --help` does not ask Hydra for each group's options (a config repository per group:
    seconds); what it lists is what Hydra lists."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from optbench.commands.common import group_options
    from optbench.commands.run import run
    from optbench.config import hydra_session
    from optbench.commands.common import ConfigSource

    with hydra_session(ConfigSource()):
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        hydra_lists = {g: sorted(loader.get_group_options(g)) for g in loader.list_groups("") if g != "hydra"}
    assert group_options() == hydra_lists

    def refuse(*args, **kwargs):
        raise AssertionError("run --help listed a group through Hydra")

    monkeypatch.setattr(ConfigLoaderImpl, "get_group_options", refuse)
    monkeypatch.chdir(workdir)
    assert run(["--help", "optimizer=lion"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("optbench run is powered by Hydra.\n")
    assert "recipe: adam_vs_adamw, " in out and "\noptimizer: adafactor, adagrad, " in out
    assert "_target_: optbench.optim.Lion" in out  # the config that the overrides compose
    assert not (workdir / "outputs").exists()


def test_hydras_shell_completion_flag_points_to_optbench_completion(workdir):
    result = run_cli("run", "-sc", "install=bash", cwd=workdir)
    assert result.returncode == 2
    assert "source <(optbench completion bash)" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("completion", "tcsh", cwd=workdir).returncode == 2


def _bash_complete(line: str, words: list[str]) -> list[str]:
    """What TAB offers after `line` in bash with `optbench completion bash` sourced; `words` is how
    bash splits the line (COMP_WORDS: `=` is a word of its own)."""
    script = (f"source <(optbench completion bash)\nCOMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              "_optbench; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, check=True)
    return result.stdout.splitlines()


def test_bash_completion_of_commands_groups_options_and_keys():
    # A finished word gets its space; `group=` and `key=` wait for the value.
    assert _bash_complete("optbench r", ["optbench", "r"]) == ["run ", "report ", "reproduce "]
    assert _bash_complete("optbench run opt", ["optbench", "run", "opt"]) == ["optimizer.", "optimizer="]
    assert _bash_complete("optbench run optimizer=ad", ["optbench", "run", "optimizer", "=", "ad"]) == [
        "adafactor ", "adagrad ", "adam ", "adam8bit ", "adamw ", "adamw8bit "]
    assert _bash_complete("optbench run optimizer=", ["optbench", "run", "optimizer", "="])[:2] == [
        "=adafactor ", "=adagrad "]  # bash's word is `=`: it is kept
    assert _bash_complete("optbench run optimizer.l", ["optbench", "run", "optimizer.l"]) == [
        "optimizer.lr_scaling=", "optimizer.lr="]
    # The keys of the option chosen on the line: Lion's, not the default AdamW's.
    lion = _bash_complete("optbench run optimizer=lion optimizer.", ["optbench", "run", "optimizer", "=", "lion",
                                                                     "optimizer."])
    assert "optimizer.betas=" in lion and "optimizer.eps=" not in lion
    assert _bash_complete("optbench run --config-", ["optbench", "run", "--config-"]) == [
        "--config-dir ", "--config-name ", "--config-path "]
    assert _bash_complete("optbench list sch", ["optbench", "list", "sch"]) == ["schedulers "]
    assert _bash_complete("optbench reproduce mom", ["optbench", "reproduce", "mom"]) == ["momentum "]
    assert _bash_complete("optbench reproduce scale=p", ["optbench", "reproduce", "scale", "=", "p"]) == ["proxy "]


def test_zsh_and_fish_scripts_register_optbench_itself(workdir):
    for shell, line in (("zsh", "compdef _optbench optbench"), ("fish", "complete -c optbench ")):
        result = run_cli("completion", shell, cwd=workdir)
        assert result.returncode == 0 and line in result.stdout
    fish = run_cli("__complete", "fish", "optimizer=ad", "optbench run optimizer=ad", cwd=workdir).stdout
    assert fish.splitlines()[:2] == ["optimizer=adafactor", "optimizer=adagrad"]  # fish adds its own space


def test_the_default_run_imports_no_library_it_does_not_use(workdir):
    """scikit-learn (with scipy), torchvision and matplotlib cost seconds to import; the default run
    uses none of them (the digits are read from scikit-learn's file, as load_digits reads it)."""
    code = ("import sys\nfrom optbench.cli import main\n"
            "assert main(['run', 'trainer.max_steps=2', 'trainer.progress=false']) == 0\n"
            "print([m for m in ('sklearn', 'scipy', 'torchvision', 'matplotlib') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_bundled_digits_are_scikit_learns():
    import torch
    from sklearn.datasets import load_digits

    from optbench.data import bundled_digits

    images, labels = bundled_digits()
    reference = load_digits()
    assert torch.equal(images, torch.tensor(reference.images, dtype=torch.float32).unsqueeze(1))
    assert torch.equal(labels, torch.tensor(reference.target))
