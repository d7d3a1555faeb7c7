"""Every bad input answered the same way: exit status 2, a message naming the key and what is
allowed, no traceback, and nothing earlier touched. Run in-process through the real entry point
(`optbench.cli.main`) for speed; test_run.py checks the same through a real process."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, run_cli, run_dirs
from optbench.cli import main
from optbench.paths import recipes_dir

# (command line, text the message must contain)
CASES = [
    # config groups: an option that does not exist
    (["run", "model=nope"], "model=nope: no such option"),
    (["run", "data=nope"], "data=nope: no such option"),
    (["run", "optimizer=nope"], "optimizer=nope: no such option"),
    (["run", "params=nope"], "params=nope: no such option"),
    (["run", "scheduler=nope"], "scheduler=nope: no such option"),
    (["run", "trainer=nope"], "trainer=nope: no such option"),
    (["run", "recipe=nope"], "recipe=nope: no such option"),
    # keys that do not exist, values of the wrong type or out of range
    (["run", "trainer.eppochs=3"], "Did you mean 'trainer.epochs'"),
    (["run", "trainer.max_steps=abc"], "trainer.max_steps='abc'"),
    (["run", "trainer.device=tpu"], "trainer.device='tpu'"),
    (["run", "trainer.precision=8"], "trainer.precision=8"),
    (["run", "trainer.accumulation_steps=0"], "trainer.accumulation_steps=0"),
    (["run", "trainer.log_every=0"], "trainer.log_every=0"),
    (["run", "trainer.clip_norm=-1"], "trainer.clip_norm=-1"),
    (["run", "trainer.ema.decay=1.5"], "trainer.ema.decay=1.5"),
    (["run", "trainer.resume=/nonexistent/last.pt"], "trainer.resume=/nonexistent/last.pt: no such checkpoint"),
    (["run", "data.batch_size=0"], "data.batch_size=0"),
    (["run", "data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["run", "model.dropout=2"], "model.dropout=2"),
    (["run", "model=resnet", "model.depth=21"], "model.depth=21"),
    (["run", "optimizer.lr=-1"], "optimizer.lr=-1"),
    (["run", "optimizer.eps=-1e-08"], "optimizer.eps=-1e-08"),
    (["run", "optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1"),
    (["run", "optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]"),
    (["run", "+optimizer.lrr=0.1"], "optimizer.lrr: not an argument of torch.optim.AdamW"),
    (["run", "optimizer._target_=torch.optim.Nope"], "optimizer._target_=torch.optim.Nope"),
    (["run", "optimizer=lookahead"], "optimizer.inner is not set"),
    (["run", "params=layer_decay", "params.decay=1.5"], "params.decay=1.5"),
    (["run", "scheduler.warmup=-1"], "scheduler.warmup=-1"),
    (["run", "scheduler=multistep", "scheduler.milestones=[5,3]"], "scheduler.milestones"),
    (["run", "scheduler=onecycle", "scheduler.pct_start=1.5"], "scheduler.pct_start=1.5"),
    (["run", "scheduler=plateau", "scheduler.metric=bleu"], "scheduler.metric"),
    (["run", "-m", "optimizer=sgd,nope"], "optimizer=nope: no such option"),
    # other commands
    (["check", "optimizer.lr=-1"], "optimizer.lr=-1"),
    (["schedules", "scheduler=nope"], "scheduler=nope: no such option"),
    (["bench", "optimizers=nope"], "nope"),
    (["list", "gizmos"], "list gizmos: no such topic"),
    (["list", "param-groups", "params=nope"], "params=nope: no such option"),
    (["trian"], "unknown command 'trian'"),
]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("bad-input")
    assert run_cli("run", *TINY, cwd=workdir).returncode == 0
    (run_dir,) = run_dirs(workdir / "outputs")
    return run_dir


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input(argv, message, earlier_run, capsys, monkeypatch):
    workdir = earlier_run.parents[2]
    monkeypatch.chdir(workdir)
    before = {p: p.read_bytes() for p in earlier_run.rglob("*") if p.is_file()}
    command, *rest = argv
    args = [command, *TINY, *rest] if command == "run" else argv
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in earlier_run.rglob("*") if p.is_file()} == before


def test_the_table_covers_every_group_and_command():
    groups = {"model", "data", "optimizer", "params", "scheduler", "trainer", "recipe"}
    named = {a.split("=")[0].split(".")[0].lstrip("+") for argv, _ in CASES for a in argv}
    assert groups <= named
    assert {"run", "check", "schedules", "bench", "list"} <= {argv[0] for argv, _ in CASES}
    assert len(CASES) >= 30


@pytest.mark.parametrize("recipe", sorted(p.stem for p in recipes_dir().glob("*.yaml")))
def test_every_recipe_passes_check(recipe, capsys):
    # At smoke scale: the full-scale data sets (CIFAR, ImageNet) are not on this machine.
    assert main(["check", f"recipe={recipe}", "smoke=true"]) == 0
    assert "the configuration is valid" in capsys.readouterr().out
