"""The `_target_` policy (optbench/targets.py) and models chosen by name from timm and torchvision.

A config's `_target_` is checked before optbench imports or calls it: a path into the standard
library (`os.system`, `this`) is never imported, an object of the wrong kind is never called,
`OPTBENCH_TRUST_TARGETS=1` trusts anything and says so in the run folder's log.
"""

from __future__ import annotations

import pytest
from conftest import read_summary, run_cli

from optbench.build import call_with_context
from optbench.config import compose, validate_overrides
from optbench.errors import ConfigError
from optbench.paths import configs_dir, recipes_dir
from optbench.targets import TRUST_VARIABLE, resolve
from optbench.validate import check_targets as check, target_components as components

TINY = ["trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1", "trainer.progress=false",
        "trainer.tensorboard=false"]
LOOKAHEAD = ["optimizer=lookahead", "optimizer@optimizer.inner=adamw"]
DCGAN = ["model=dcgan", "data=digit_images"]
IMAGES = ["data=synthetic", "data.train_size=32", "data.val_size=16", "data.batch_size=16"]


@pytest.fixture(autouse=True)
def policy(monkeypatch):
    """The policy in force, whatever the environment of the test run says."""
    monkeypatch.delenv(TRUST_VARIABLE, raising=False)


# (overrides, the key and target the refusal names, what it says is allowed)
REFUSED = [
    (["optimizer._target_=os.system", "+optimizer.command=touch {marker}"], "optimizer._target_=os.system",
     "torch.optim.Optimizer subclass"),
    (["model._target_=os.system", "+model.command=touch {marker}"], "model._target_=os.system",
     "torch.nn.Module subclass"),
    (["data._target_=os.system", "+data.command=touch {marker}"], "data._target_=os.system",
     "optbench.data.InMemoryData"),
    (["scheduler._target_=subprocess.call", "+scheduler.args=[touch,{marker}]"], "scheduler._target_=subprocess.call",
     "LRScheduler subclass"),
    (["params._target_=os.system", "+params.command=touch {marker}"], "params._target_=os.system",
     "optbench.param_groups.Rules"),
    (["optimizer._target_=this.x"], "optimizer._target_=this.x", "torch.optim.Optimizer subclass"),
    ([*LOOKAHEAD, "optimizer.inner._target_=os.system", "+optimizer.inner.command=touch {marker}"],
     "optimizer.inner._target_=os.system", "torch.optim.Optimizer subclass"),
    ([*DCGAN, "gan.g_scheduler._target_=shutil.rmtree", "+gan.g_scheduler.path={marker}"],
     "gan.g_scheduler._target_=shutil.rmtree", "LRScheduler subclass"),
    (["model._target_=torch.hub.load", "+model.repo_or_dir=x", "+model.model=y"], "model._target_=torch.hub.load",
     "a function not annotated to return one"),
    (["optimizer._target_=optbench.models.MLP"], "optimizer._target_=optbench.models.MLP", "a class of another kind"),
    (["model._target_=torch.utils.bottleneck.__main__.main"], "model._target_=torch.utils.bottleneck.__main__.main",
     "a __main__ module"),
]


@pytest.mark.parametrize(("overrides", "named", "allowed"), REFUSED, ids=[case[1] for case in REFUSED])
def test_a_target_outside_the_policy_is_refused_before_it_runs(overrides, named, allowed, tmp_path, monkeypatch,
                                                               capfd):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    if "rmtree" in named:
        marker.mkdir()  # what rmtree would delete
    with pytest.raises(ConfigError) as refused:
        validate_overrides([o.format(marker=marker) for o in overrides], multirun=False)
    (problem,) = refused.value.problems
    assert problem.startswith(f"{named}: not allowed") and allowed in problem and TRUST_VARIABLE in problem
    assert marker.exists() == ("rmtree" in named)  # nothing created, nothing deleted
    assert "Beautiful is better than ugly" not in capfd.readouterr().out  # `this` was never imported
    assert list(tmp_path.iterdir()) == ([marker] if "rmtree" in named else [])


@pytest.mark.parametrize("command", ["check", "toy"])
def test_every_command_refuses_os_system_with_exit_2_and_no_folder(command, workdir):
    result = run_cli(command, "optimizer._target_=os.system", "+optimizer.command=touch FILE", cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert "optimizer._target_=os.system: not allowed" in result.stderr and "Traceback" not in result.stderr
    assert list(workdir.iterdir()) == []  # no FILE, no outputs/


def option_overrides(group: str, name: str) -> list[str]:
    """The overrides that choose one option of a group, with what it needs to compose."""
    return {("optimizer", "lookahead"): LOOKAHEAD}.get((group, name), [f"{group}={name}"])


CONFIGS = [(group, path.stem) for group in ("model", "data", "optimizer", "scheduler", "params")
           for path in sorted((configs_dir() / group).glob("*.yaml"))]


def assert_within_the_policy(overrides: list[str]) -> None:
    """Every component's target resolves under the policy (ConfigError naming what it refuses,
    ImportError for what is not installed), and a model built by name names a listed model."""
    cfg = compose(overrides)
    for key, node in components(cfg):
        resolve(str(node._target_), key)
    check(cfg)


@pytest.mark.parametrize(("group", "name"), CONFIGS, ids=[f"{g}={n}" for g, n in CONFIGS])
def test_every_config_is_within_the_policy(group, name):
    assert_within_the_policy(option_overrides(group, name))


@pytest.mark.parametrize("recipe", sorted(p.stem for p in recipes_dir().glob("*.yaml")))
def test_every_recipe_is_within_the_policy(recipe):
    assert_within_the_policy([f"recipe={recipe}"])


def test_a_trust_setting_other_than_0_or_1_is_refused(monkeypatch):
    monkeypatch.setenv(TRUST_VARIABLE, "yes")
    with pytest.raises(ConfigError, match=f"{TRUST_VARIABLE}=yes: must be 1"):
        check(compose([]))


OWN_FACTORY = """
import torch
def tiny(input_shape, num_classes):  # no return annotation: outside the policy
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))
"""


def test_trusting_targets_runs_ones_own_code_and_says_so_in_the_run_folder(workdir, monkeypatch):
    (workdir / "mine.py").write_text(OWN_FACTORY)
    monkeypatch.syspath_prepend(str(workdir))
    with pytest.raises(ConfigError, match="model._target_=mine.tiny: not allowed"):
        check(compose(["model._target_=mine.tiny"]))
    own = ["model._target_=mine.tiny", "~model.hidden", "~model.dropout", "~model.batch_norm", *TINY,
           "hydra.run.dir=run"]
    trusted = run_cli("run", *own, cwd=workdir, env={"PYTHONPATH": str(workdir), TRUST_VARIABLE: "1"})
    assert trusted.returncode == 0, trusted.stderr
    assert read_summary(workdir / "run")["status"] == "completed"
    note = f"model._target_=mine.tiny: outside the _target_ policy (a function not annotated to return one); " \
           f"run because {TRUST_VARIABLE}=1."
    assert note in (workdir / "run" / "optbench.log").read_text()


# ------------------------------------------------------------------ timm and torchvision by name


def test_context_goes_only_to_arguments_a_signature_names():
    def factory(model_name: str, num_classes: int = 1000, **kwargs: object) -> dict:
        return {"model_name": model_name, "num_classes": num_classes, **kwargs}

    built = call_with_context(factory, {"model_name": "m"}, {"num_classes": 10, "input_shape": (1, 8, 8)})
    assert built == {"model_name": "m", "num_classes": 10}  # input_shape is not handed on through **kwargs


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("overrides", [
    ["model=timm", "model.model_name=resnet10t"],
    # timm's own factory, with its arguments set by hand: it names neither input_shape nor per_token
    ["model=timm", "model._target_=timm.create_model", "model.model_name=resnet10t", "+model.in_chans=1",
     "+model.num_classes=10"],
], ids=["model=timm", "timm.create_model"])
def test_a_timm_model_by_name_trains_on_the_digits(overrides, workdir):
    import timm

    result = run_cli("run", *overrides, "data.batch_size=16", *TINY, "hydra.run.dir=run", cwd=workdir)
    assert result.returncode == 0, result.stderr
    summary = read_summary(workdir / "run")
    assert summary["status"] == "completed" and summary["steps"] == 2
    # the digits' 1 channel and 10 classes, untrained (nothing downloaded)
    assert summary["params"] == parameters(timm.create_model("resnet10t", in_chans=1, num_classes=10))


def test_a_torchvision_model_by_name_trains(workdir):
    import torchvision

    result = run_cli("run", "model=torchvision", "model.name=resnet18", *IMAGES, *TINY, "hydra.run.dir=run",
                     cwd=workdir)
    assert result.returncode == 0, result.stderr
    summary = read_summary(workdir / "run")
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["params"] == parameters(torchvision.models.get_model("resnet18", num_classes=10))


def test_an_unknown_timm_model_is_refused_with_the_closest_names(workdir):
    result = run_cli("run", "model=timm", "model.model_name=resnet19", *TINY, cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert "model.model_name='resnet19': no such model. Did you mean 'resnet18'" in result.stderr
    assert "timm.list_models()" in result.stderr and "Traceback" not in result.stderr
    assert list(workdir.iterdir()) == []


def test_an_unknown_torchvision_model_is_refused():
    with pytest.raises(ConfigError, match=r"model.name='resnet19': no such model. Did you mean 'resnet18'"):
        check(compose(["model=torchvision", "model.name=resnet19"]))
