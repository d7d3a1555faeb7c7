"""Every bad input answered the same way: exit status 2, a message naming the key (or argument),
no traceback, no new folder, and an earlier finished run byte-identical.

One table covers every config group, every command and every kind of bad value; part of it is
generated from the config folders (every group gets a misspelled option and a misspelled group
name, every option a NaN in one of its numeric fields, every trainer setting a value of the wrong
type). The cases run in-process through the real entry point (`optbench.cli.main`) for speed;
test_run.py checks the same through a real process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY, run_cli, run_dirs
from optbench.cli import main
from optbench.commands.common import group_options
from optbench.paths import configs_dir, recipes_dir
from optbench.schema import TrainerConfig

# What a run case gets before its own overrides: a wrongly accepted case then ends in seconds.
QUICK = ["trainer.max_steps=2", "trainer.progress=false"]

# What an option needs beside it to be a runnable config (its data, its model, its inner optimizer).
COMPANIONS = {
    ("data", "chars"): ["model=rnn"], ("data", "code_topics"): ["model=rnn"], ("data", "counting"): ["model=rnn"],
    ("data", "masked_chars"): ["model=bert"], ("data", "digit_images"): ["model=dcgan"],
    ("data", "ring"): ["model=gan_ring"], ("model", "rnn"): ["data=chars"], ("model", "bert"): ["data=masked_chars"],
    ("model", "dcgan"): ["data=digit_images"], ("model", "gan_ring"): ["data=ring"],
    ("model", "torchvision"): ["data=synthetic"], ("model", "tv_resnet"): ["data=synthetic"],
    ("model", "tv_vit"): ["data=synthetic"], ("optimizer", "lookahead"): ["optimizer@optimizer.inner=sgd"],
}
COMPONENT_GROUPS = ("model", "data", "optimizer", "params", "scheduler")


def misspelled(word: str) -> str:
    """`word` without its second-to-last letter (optimizer -> optimizr, adamw -> adaw)."""
    return word[:-2] + word[-1] if len(word) > 2 else word + "x"


def first_number(group: str, option: str) -> str | None:
    """The first numeric (not boolean) top-level field of configs/GROUP/OPTION.yaml."""
    values = yaml.safe_load((configs_dir() / group / f"{option}.yaml").read_text()) or {}
    return next((k for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                 and not k.startswith("_")), None)


def generated_cases() -> list[tuple[list[str], str]]:
    """(command line, text that the message must contain), from the config folders and the trainer schema."""
    cases = []
    groups = {g: options for g, options in group_options().items() if "/" not in g}
    for group, options in groups.items():
        option = options[0]
        add = "+" if group == "gan" else ""  # not in train.yaml's defaults: chosen with +gan=NAME
        typo = next(o for o in (misspelled(option), option + "x") if o not in options)
        cases.append((["run", f"{add}{group}={typo}"], f"{group}={typo}: no such option"))
        cases.append((["run", f"{misspelled(group)}={option}"], f"Did you mean '{group}={option}'"))
    for group in COMPONENT_GROUPS:
        for option in groups[group]:
            field = first_number(group, option)
            if field is not None:
                cases.append((["run", f"{group}={option}", *COMPANIONS.get((group, option), []),
                               f"{group}.{field}=nan"], f"{group}.{field}=nan: must be"))
    for name, tp in TrainerConfig.field_types().items():
        if tp is str or typing.get_origin(tp) is typing.Union and str in typing.get_args(tp):
            continue  # free text (trainer.monitor, trainer.resume): cases of their own below
        if dataclasses.is_dataclass(tp):
            continue  # a group of settings (trainer.ema): its fields have cases of their own
        cases.append((["run", f"trainer.{name}=[1,2]"], f"trainer.{name}=[1, 2]: must be"))
    return cases


# (command line, text the message must contain); {files}: a folder of bad files, {run}: the earlier run.
HAND_WRITTEN = [
    # no such option, key or command
    (["run", "recipe=nope"], "recipe=nope: no such option"),
    (["run", "trainer.eppochs=3"], "Did you mean 'trainer.epochs'"),
    (["run", "+optimizer.lrr=0.1"], "optimizer.lrr: not an argument of torch.optim.AdamW"),
    (["run", "optimizer._target_=torch.optim.Nope"], "optimizer._target_=torch.optim.Nope"),
    (["run", "optimizer=lookahead"], "optimizer.inner is not set"),
    (["run", "-m", "optimizer=sgd,nope"], "optimizer=nope: no such option"),
    (["run", "gan=adam"], "+gan=adam"),
    (["run", "hydra/launcher=nope"], "hydra/launcher=nope: no such option"),
    (["run", "--nosuch-flag"], "--nosuch-flag: no such flag"),
    (["run", "--config-name", "nosuch"], "--config-name=nosuch: no such config"),
    (["run", "-cp", "{files}"], "--config-name=train: no such config in {files}"),
    (["run", "--config-dir", "/nonexistent"], "--config-dir=/nonexistent: no such folder"),
    (["trian"], "unknown command 'trian'"),
    # wrong type, out of range, not finite (item 6)
    (["run", "trainer.max_steps=abc"], "trainer.max_steps='abc'"),
    (["run", "trainer.max_steps=0"], "trainer.max_steps=0"),
    (["run", "trainer.max_steps=1e400"], "trainer.max_steps=inf"),
    (["run", "trainer.device=tpu"], "trainer.device='tpu'"),
    (["run", "trainer.precision=8"], "trainer.precision=8"),
    (["run", "trainer.accumulation_steps=0"], "trainer.accumulation_steps=0"),
    (["run", "trainer.log_every=0"], "trainer.log_every=0"),
    (["run", "trainer.clip_norm=-1"], "trainer.clip_norm=-1"),
    (["run", "trainer.clip_norm=inf"], "trainer.clip_norm=inf"),
    (["run", "trainer.clip_norm_type=-inf"], "trainer.clip_norm_type=-inf"),
    (["run", "trainer.ema.decay=1.5"], "trainer.ema.decay=1.5"),
    (["run", "trainer.ema.decay=nan"], "trainer.ema.decay=nan"),
    (["run", "trainer.ema.decay=true"], "trainer.ema.decay=True"),
    (["run", "trainer.ema=0.9"], "trainer.ema=0.9: must be a group of settings"),
    (["run", "trainer.seed=-1"], "trainer.seed=-1"),
    (["run", "trainer.monitor=banana"], "trainer.monitor='banana': never logged"),
    (["run", "data=chars", "model=rnn", "trainer.monitor=acc_x"], "trainer.monitor='acc_x'"),
    (["run", "optimizer.lr=-1"], "optimizer.lr=-1"),
    (["run", "optimizer.lr=inf"], "optimizer.lr=inf"),
    (["run", "optimizer.lr=1e400"], "optimizer.lr=inf"),
    (["run", "optimizer.lr=true"], "optimizer.lr=True"),
    (["run", "optimizer.lr=nan"], "optimizer.lr=nan"),
    (["run", "optimizer.lr=abc"], "optimizer.lr='abc'"),
    (["run", "optimizer.eps=-1e-08"], "optimizer.eps=-1e-08"),
    (["run", "optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1"),
    (["run", "optimizer.weight_decay=inf"], "optimizer.weight_decay=inf"),
    (["run", "optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]"),
    (["run", "optimizer.betas=[0.9,nan]"], "optimizer.betas=[0.9, nan]"),
    (["run", "optimizer=sgd", "optimizer.momentum=true"], "optimizer.momentum=True"),
    (["run", "optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum=1.0"),
    (["run", "optimizer.lr_scaling=cubic"], "optimizer.lr_scaling"),
    (["run", "params=layer_decay", "params.decay=1.5"], "params.decay=1.5"),
    (["run", "scheduler.warmup=-1"], "scheduler.warmup=-1"),
    (["run", "scheduler=multistep", "scheduler.milestones=[5,3]"], "scheduler.milestones"),
    (["run", "scheduler=onecycle", "scheduler.pct_start=1.5"], "scheduler.pct_start=1.5"),
    (["run", "scheduler=plateau", "scheduler.metric=bleu"], "scheduler.metric"),
    (["run", "data.batch_size=0"], "data.batch_size=0"),
    (["run", "data.batch_size=100000"], "data.batch_size=100000: larger than the training set (1,43"),
    (["run", "data.batch_size=2.5"], "data.batch_size=2.5"),
    # the default model's batch norm cannot train on one sample: refused before a batch of one ends the run
    (["run", "data.batch_size=3"], "data.batch_size=3: the last batch of each epoch holds 1 of the 1,438 training "
                                   "samples, and model._target_=optbench.models.MLP has batch norm"),
    (["run", "data.batch_size=1"], "data.batch_size=1: every batch holds 1 sample(s), and model._target_="),
    (["check", "data.batch_size=2", "trainer.devices=2"],
     "data.batch_size=2: every batch holds 2 sample(s), 1 per process (2 processes), and model._target_="),
    (["run", "model.batch_norm=maybe"], "model.batch_norm='maybe': must be true or false"),
    (["run", "data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["run", "data=synthetic", "data.input_shape=[0,32,32]"], "data.input_shape=[0, 32, 32]"),
    (["run", "data=synthetic", "data.input_shape=[3,a]"], "data.input_shape=[3, 'a']"),
    (["run", "model.dropout=2"], "model.dropout=2"),
    (["run", "model.hidden=[0]"], "model.hidden=[0]"),
    (["run", "model.hidden=-5"], "model.hidden=-5"),
    (["run", "model.hidden=[a,b]"], "model.hidden=['a', 'b']"),
    (["run", "model=resnet", "model.depth=21"], "model.depth=21"),
    (["run", "batching=accumulate_64x16", "trainer.accumulation_steps=0"], "trainer.accumulation_steps=0"),
    (["run", "trainer.ema=[1,2]"], "trainer.ema=[1,2]: trainer.ema is a group of settings (decay)"),
    (["run", "hydra.run.dir="], "hydra.run.dir='': empty"),
    (["run", "hydra.run.dir={files}/a_file"], "hydra.run.dir={files}/a_file: that is a file"),
    (["run", "hydra.run.dir={files}/a_file/sub"], "hydra.run.dir={files}/a_file/sub"),
    (["run", "hydra.run.dir=/proc/x"], "hydra.run.dir=/proc/x: no folder can be made"),
    (["run", "-m", "hydra.sweep.dir={files}/a_file", "trainer.seed=0,1"], "hydra.sweep.dir={files}/a_file"),
    (["run", "hydra.run.dir={run}"], "that folder already holds a run"),
    (["run", "optimizer.lr=${nosuch.key}"], "optimizer.lr=${nosuch.key}: Interpolation key 'nosuch.key' not found"),
    (["run", "hydra.run.dir=${nosuch}"], "hydra.run.dir=${nosuch}"),
    # found only by building the data and the model, or reading a checkpoint (item 7)
    (["run", "data=cifar10", "data.root=/nonexistent/x"], "data.root=/nonexistent/x: no cifar10 there"),
    (["run", "data=imagenet", "data.root=/nonexistent/x"], "data.root=/nonexistent/x"),
    (["run", "model=vit", "data=chars"], "model._target_=optbench.models.ViT: reads images"),
    (["run", "model=bert"], "model._target_=optbench.models.Bert: reads token sequences"),
    (["run", "model=rnn", "data=chars", "trainer.channels_last=true"], "trainer.channels_last=true"),
    (["run", "trainer.channels_last=true"], "trainer.channels_last=true: model._target_=optbench.models.MLP has no"),
    (["run", "trainer.device=cuda"] if not torch.cuda.is_available() else ["run", "trainer.device=tpu"],
     "trainer.device="),
    (["run", "data.target='val/banana >= 0.5'"], "data.target='val/banana >= 0.5'"),
    (["run", "data.target='acc > 0.5'"], "data.target='acc > 0.5'"),
    (["run", "trainer.resume=/nonexistent/last.pt"], "trainer.resume=/nonexistent/last.pt: no such checkpoint"),
    (["run", "trainer.resume={files}"], "a folder, not a checkpoint file"),
    (["run", "trainer.resume={files}/text.pt"], "it starts with b'hell'"),
    (["run", "trainer.resume={files}/truncated.pt"], "the file is truncated"),
    (["run", "trainer.resume={files}/damaged.pt"], "fails its checksum"),
    (["run", "trainer.resume={files}/empty.pt"], "the file is empty (0 bytes)"),
    (["run", "trainer.resume={files}/tensor.pt"], "not an optbench checkpoint (no model or progress in it)"),
    (["run", "trainer.resume={files}/protocol9.pt"], "trainer.resume={files}/protocol9.pt: not a readable"),
    (["run", "-m", "trainer.resume={files}/empty.pt", "trainer.seed=0,1"], "the file is empty"),
    (["check", "trainer.resume={files}/truncated.pt"], "the file is truncated"),
    # overrides that Hydra's grammar cannot read, group choices that name files (item 9)
    (["run", "-m", "optimizer.lr=1e-3,"], "optimizer.lr=1e-3,: ends with a comma"),
    (["run", "-m", "optimizer.lr=1e-3,,3e-3"], "optimizer.lr=1e-3,,3e-3: two commas"),
    (["run", "model=мlp"], "model=мlp: non-ASCII character 'м' (CYRILLIC SMALL LETTER EM) at position 7"),
    (["run", "optimizer.lr=１e-3"], "it looks like '1'"),
    (["run", "optimizer.lr"], "optimizer.lr: not an override; write KEY=VALUE"),
    (["run", "optimizer.betas=[0.9,0.99"], "optimizer.betas=[0.9,0.99: cannot be read as an override"),
    (["run", "recipe=/some/path.yaml"], "recipe=/some/path.yaml: recipe takes one of"),
    (["run", "model=models/mlp.yaml"], "model=models/mlp.yaml: model takes one of"),
    (["run", "optimizr=adamw"], "Did you mean 'optimizer=adamw'"),
    (["run", "smoke=true"], "smoke=true: this configuration lists no smoke_overrides"),
    # other commands
    (["check", "optimizer.lr=-1"], "optimizer.lr=-1"),
    (["check", "-m", "optimizer=sgd,adamw", "optimizer.lr=nan"], "optimizer.lr=nan"),
    (["check", "model=resnet", "model.depth=nan"], "model.depth=nan"),
    (["schedules", "scheduler=nope"], "scheduler=nope: no such option"),
    (["schedules", "scheduler.warmup=nan"], "scheduler.warmup=nan"),
    (["schedules", "--out", "{files}/a_file"], "--out={files}/a_file: that is a file"),
    (["schedules", "--out", "/proc/x"], "--out=/proc/x: no folder can be made"),
    (["schedules", "optimizer.lr=1e-3,"], "optimizer.lr=1e-3,: ends with a comma"),
    (["lr-find", "--out", "{files}/a_file"], "--out={files}/a_file: that is a file"),
    (["lr-find", "--out", "/proc/x"], "--out=/proc/x"),
    (["lr-find", "--start", "1", "--end", "0.1"], "--start=1.0 --end=0.1"),
    (["lr-find", "--steps", "2"], "--steps=2"),
    (["lr-find", "--steps", "-1"], "--steps=-1: need steps >= 5"),
    (["lr-find", "--end", "inf"], "--end=inf: must be a finite LR"),
    (["lr-find", "--end", "nan"], "--end=nan: must be a finite LR"),
    (["lr-find", "--start", "0"], "--start=0.0 --end=10.0: need 0 < start < end"),
    (["lr-find", "--start=-inf"], "--start=-inf: must be a finite LR"),
    (["lr-find", "--smoothing", "nan"], "--smoothing=nan: need 0 <= smoothing < 1"),
    (["lr-find", "--steps", "abc"], "--steps: invalid int value: 'abc'"),
    (["lr-find", "optimizer.lr=inf"], "optimizer.lr=inf"),
    (["lr-find", "--config-name", "nosuch"], "--config-name=nosuch: no such config"),
    (["report", "/nonexistent/runs"], "/nonexistent/runs"),
    (["report", "{files}"], "no runs found"),
    (["report", "--out", "{files}/a_file", "{run}"], "--out={files}/a_file: that is a file"),
    (["report", "--out", "/proc/x", "{run}"], "--out=/proc/x"),
    (["report", "--target", "abc", "{run}"], "--target"),
    (["toy", "--steps", "-5"], "--steps=-5: must be an integer >= 1"),
    (["toy", "--steps", "0"], "--steps=0"),
    (["toy", "--function", "nope"], "--function"),
    (["toy", "--out", "{files}/a_file"], "--out={files}/a_file"),
    (["toy", "optimizer=nope"], "optimizer=nope: no such option"),
    (["toy", "optimizer.lr=nan"], "optimizer.lr=nan"),
    (["compare", "optimizer.lr=1e-3"], "optimizer: choose the optimizers to compare"),
    (["compare", "optimizer=sgd,nope"], "optimizer=nope: no such option"),
    (["compare", "optimizer=sgd", "hydra.sweep.dir={files}/a_file"], "hydra.sweep.dir={files}/a_file"),
    (["compare", "optimizer=sgd", "--nope"], "--nope: not an option of optbench compare"),
    (["bench", "optimizers=nope"], "nope"),
    (["bench", "repeats=abc"], "repeats=abc"),
    (["bench", "repeats=0"], "repeats=0"),
    (["bench", "repeats=inf"], "repeats=inf: must be a whole number >= 1"),
    (["bench", "repeats=1e400"], "repeats=1e400: must be a whole number >= 1"),
    (["bench", "repeats=nan"], "repeats=nan: must be a whole number >= 1"),
    (["bench", "repeats=2.5"], "repeats=2.5: must be a whole number >= 1"),
    (["bench", "warmup=-1"], "warmup=-1: must be >= 0"),
    (["bench", "params=-inf"], "params=-inf: must be a whole number >= 1"),
    (["bench", "width=-5"], "width=-5: must be >= 1"),
    (["bench", "--csv"], "--csv needs a PATH"),
    (["bench", "gizmo=3"], "bench: unknown argument 'gizmo=3'"),
    (["list", "gizmos"], "list gizmos: no such topic"),
    (["list", "param-groups", "params=nope"], "params=nope: no such option"),
    (["list", "param-groups", "model.hidden=[0]"], "model.hidden=[0]"),
]

CASES = HAND_WRITTEN + generated_cases()


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def earlier_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A finished run in WORKDIR/outputs, and the hashes of its files (taken once)."""
    workdir = tmp_path_factory.mktemp("bad-input")
    assert run_cli("run", *TINY, cwd=workdir).returncode == 0
    (run_dir,) = run_dirs(workdir / "outputs")
    return run_dir, hashes(run_dir)


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> Path:
    """Files that are not what a command wants: text, a truncated and a damaged checkpoint, ..."""
    folder = tmp_path_factory.mktemp("bad-files")
    (folder / "a_file").write_text("not a folder\n")
    (folder / "text.pt").write_text("hello\n")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "protocol9.pt").write_bytes(b"\x80\x09abc")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    torch.save({"model": {"w": torch.zeros(64)}, "progress": {"step": 1}}, folder / "good.pt")
    whole = (folder / "good.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    damaged = bytearray(whole)
    damaged[40:80] = bytes(40)  # the first member's name and data: its checksum no longer matches
    (folder / "damaged.pt").write_bytes(bytes(damaged))
    return folder


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input(argv, message, earlier_run, bad_files, capsys, monkeypatch):
    run_dir, run_hashes = earlier_run
    workdir = run_dir.parents[2]
    monkeypatch.chdir(workdir)
    fill = {"{files}": str(bad_files), "{run}": str(run_dir)}
    for placeholder, value in fill.items():
        argv = [a.replace(placeholder, value) for a in argv]
        message = message.replace(placeholder, value)
    command, *rest = argv
    tree = sorted(workdir.rglob("*"))
    try:
        status = main([command, *QUICK, *rest] if command == "run" else argv)
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    out = capsys.readouterr()
    assert status == 2, out.err
    assert message in out.err
    assert "Traceback" not in out.out + out.err
    assert sorted(workdir.rglob("*")) == tree  # no run folder, no output folder, no probe left
    assert hashes(run_dir) == run_hashes


def test_the_table_covers_every_group_command_and_kind_of_value():
    named = {a.split("=")[0].split(".")[0].lstrip("+").partition("@")[0] for argv, _ in CASES for a in argv}
    assert set(group_options()) - {"hydra/launcher"} <= named
    commands = {argv[0] for argv, _ in CASES}
    assert {"run", "check", "compare", "report", "lr-find", "schedules", "toy", "bench", "list"} <= commands
    values = " ".join(a for argv, _ in CASES for a in argv)
    for kind in ("=nan", "=inf", "=1e400", "=true", "=abc", "=-1", ".pt", "/proc/x", "мlp", "1e-3,"):
        assert kind in values
    assert len(CASES) >= 150


@pytest.mark.parametrize("recipe", sorted(p.stem for p in recipes_dir().glob("*.yaml")))
def test_every_recipe_passes_check(recipe, capsys):
    # At smoke scale: the full-scale data sets (CIFAR, ImageNet) are not on this machine.
    assert main(["check", f"recipe={recipe}", "smoke=true"]) == 0
    assert "the configuration is valid" in capsys.readouterr().out


def test_a_foreign_pickle_is_refused_without_torchs_warning(bad_files, tmp_path):
    # torch warns about the pickle protocol of a file it then refuses: the refusal says enough.
    result = run_cli("run", f"trainer.resume={bad_files}/protocol9.pt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"optbench: error: trainer.resume={bad_files}/protocol9.pt: not a readable")
    assert "pickle protocol" not in result.stderr and "Warning" not in result.stderr
    assert list(tmp_path.iterdir()) == []
