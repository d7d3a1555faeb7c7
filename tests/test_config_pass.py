"""One configuration pass: `optbench run` and `optbench check` validate exactly what Hydra's main
will run (--config-dir, --config-name, --config-path, hydra.searchpath), before any folder exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, read_summary, run_cli
from optbench.cli import main
from optbench.commands.common import ConfigSource, Invocation, override_key, task_overrides
from optbench.errors import ConfigError
from optbench.paths import configs_dir

TYPO = "trainer.eppochs"


@pytest.fixture
def user_configs(tmp_path: Path) -> Path:
    """A user's config folder: an optimizer of their own, a bad one, primary configs with a typo
    (one on top of optbench's `train`, one complete), and a trainer option with the same typo."""
    folder = tmp_path / "myconfigs"
    (folder / "optimizer").mkdir(parents=True)
    (folder / "trainer").mkdir()
    (folder / "optimizer" / "myadam.yaml").write_text("_target_: torch.optim.Adam\nlr: 0.002\n")
    (folder / "optimizer" / "badadam.yaml").write_text("_target_: torch.optim.Adam\nlr: -1\n")
    (folder / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\ntrainer:\n  eppochs: 3\n")
    (folder / "full.yaml").write_text((configs_dir() / "train.yaml").read_text() + "\ntrainer:\n  eppochs: 3\n")
    (folder / "trainer" / "typo.yaml").write_text("defaults:\n  - default\n  - _self_\neppochs: 3\n")
    return folder


def test_parse_splits_flags_from_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "D").mkdir()
    invocation = Invocation.parse(["-m", "--config-dir=D", "-cn", "mine", "--cfg", "job", "-i", "config",
                                   "a=1", "~b"])
    assert invocation.overrides == ("a=1", "~b")
    assert invocation.multirun and invocation.shows_only
    assert invocation.source == ConfigSource(config_name="mine", config_dir=str(tmp_path / "D"))
    assert invocation.flags == ("--cfg", "job", "-i", "config")
    # What Hydra's main gets: the same source and overrides, which parse back to the same invocation.
    assert Invocation.parse(invocation.argv()) == invocation
    assert Invocation.parse(["--config-path", "D"]).source.primary_path == str(tmp_path / "D")
    assert not Invocation.parse(["a=1"]).shows_only


@pytest.mark.parametrize("args,message", [
    (["--config-dir", "nowhere"], "--config-dir=nowhere: no such folder"),
    (["--config-path", "nowhere"], "--config-path=nowhere: no such folder"),
    (["--config-name"], "--config-name: needs a value"),
    (["--frobnicate"], "--frobnicate: no such flag"),
])
def test_parse_refuses_bad_flags(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        Invocation.parse(args)


def test_override_parsing():
    assert override_key("+trainer.seed=1") == "trainer.seed"
    assert override_key("~trainer.seed") == "trainer.seed"
    assert task_overrides(["a=1", "hydra.run.dir=x", "+hydra.job.name=y", "hydra/launcher=joblib"]) == ["a=1"]


def test_check_accepts_an_optimizer_from_config_dir(user_configs, capsys):
    assert main(["check", "optimizer=myadam"]) == 2  # not one of optbench's own
    assert main(["check", "--config-dir", str(user_configs), "optimizer=myadam"]) == 0
    assert "optimizer=myadam" in capsys.readouterr().out


def test_run_trains_with_an_optimizer_from_config_dir(user_configs, workdir):
    run_dir = workdir / "run"
    result = run_cli("run", "--config-dir", str(user_configs), "optimizer=myadam", *TINY, "trainer.max_steps=2",
                     f"hydra.run.dir={run_dir}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert summary["config"]["optimizer"]["_target_"] == "torch.optim.Adam"
    assert summary["config"]["optimizer"]["lr"] == 0.002


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("flags", [
    ["--config-name", "mine"],  # a primary config on top of optbench's train
    ["-cn", "full"],  # a complete primary config of the user's own
    ["hydra.searchpath=[file://{folder}]", "trainer=typo"],  # an option found through hydra.searchpath
], ids=["config-name", "full-config", "searchpath"])
def test_a_typo_in_the_users_config_is_refused_before_any_folder(command, flags, user_configs, tmp_path,
                                                                capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    args = [f.format(folder=user_configs) for f in flags]
    if "hydra.searchpath" not in args[0]:
        args = ["--config-dir", str(user_configs), *args]
    assert main([command, *args, *TINY, f"hydra.run.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert TYPO in err
    assert "Traceback" not in err
    assert not run_dir.exists()
    assert not (tmp_path / "outputs").exists()


def test_a_typo_is_refused_by_the_real_command_with_no_traceback(user_configs, workdir):
    result = run_cli("run", "-cd", str(user_configs), "-cn", "mine", *TINY, f"hydra.run.dir={workdir / 'run'}",
                     cwd=workdir)
    assert result.returncode == 2
    assert TYPO in result.stderr and "Traceback" not in result.stderr
    assert list(workdir.iterdir()) == [user_configs]  # no run folder, no outputs/


def test_a_missing_primary_config_names_the_folders(user_configs, capsys):
    assert main(["check", "--config-dir", str(user_configs), "--config-name", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--config-name=nope: no such config" in err and str(user_configs) in err


def test_searchpath_adds_options_as_config_dir_does(user_configs, capsys):
    assert main(["check", f"hydra.searchpath=[file://{user_configs}]", "optimizer=myadam"]) == 0
    assert "optimizer=myadam" in capsys.readouterr().out


def test_a_sweep_validates_every_variant_with_config_dir(user_configs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    source = ["--config-dir", str(user_configs)]
    assert main(["check", "-m", *source, "optimizer=adamw,myadam"]) == 0
    assert main(["run", "-m", *source, "optimizer=adamw,myadam,badadam", *TINY, f"hydra.sweep.dir={sweep_dir}"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr=-1" in err and "Traceback" not in err
    assert not sweep_dir.exists()


def test_info_flags_see_the_same_configs(user_configs, capsys):
    # --cfg prints instead of running: Hydra's main gets --config-dir too.
    assert main(["run", "--cfg", "job", "--config-dir", str(user_configs), "optimizer=myadam"]) == 0
    assert "torch.optim.Adam" in capsys.readouterr().out


def test_full_error_adds_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert main(["check", "optimizer.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "optbench: error: optimizer.lr=-1" in err
