"""Every trick x every workload family x every entry (run, lr-find, compare): the trick's effect
shows in what the entry writes, or the entry refuses it before compute with exit 2, naming the key.

Generated from what exists: the tricks are `TrainerConfig`'s settings (a new setting fails
`test_every_trainer_setting_is_a_trick_or_says_why_not` until it is given a check here) plus a
wrapped optimizer; the families come from configs/model/ (every model config belongs to one).
torch.compile runs with its `eager` backend here: Dynamo still captures every graph (the wiring
under test), without minutes of Inductor code generation; test_tricks.py compares Inductor's
weights with eager ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import read_metrics, read_summary
from optbench.commands import lr_find
from optbench.targets import import_path as locate
from optbench.config import compose, job_config, validate_overrides
from optbench.errors import ConfigError
from optbench.gan_trainer import trainer_class
from optbench.paths import configs_dir
from optbench.schema import TrainerConfig

STEPS = 2
QUIET = [f"trainer.max_steps={STEPS}", "trainer.log_every=1", f"trainer.eval_every={STEPS}",
         "trainer.progress=false", "trainer.tensorboard=false", "trainer.diagnostics_every=null"]

# A small model of each family, on data it reads.
FAMILIES = {
    "classifier": ["model=resnet", "data=synthetic", "data.input_shape=[3,8,8]", "data.train_size=32",
                   "data.val_size=8", "data.batch_size=8"],
    "lm": ["model=rnn", "model.hidden=16", "model.embed_dim=8", "data=chars", "data.seq_len=16",
           "data.max_chars=4000", "data.batch_size=8", "data.target=null"],
    "bert": ["model=bert", "model.dim=16", "model.depth=1", "model.heads=2", "data=masked_chars",
             "data.seq_len=16", "data.max_chars=4000", "data.batch_size=8", "data.target=null"],
    "gan": ["model=dcgan", "model.latent_dim=8", "model.g_width=8", "model.d_width=8", "data=digit_images",
            "data.size=16", "data.batch_size=8", "data.target=null", "trainer.monitor=modes"],
}


def family_of(model: str) -> str:
    """The family of a model config: GANs by their `gan` settings, the others by what they read."""
    cfg = compose([f"model={model}"])
    if cfg.get("gan") is not None:
        return "gan"
    target = locate(cfg.model._target_)
    if "tokens" in getattr(target, "inputs", ()):
        return "bert" if hasattr(target, "load_body") else "lm"  # BERT: pre-training, then fine-tuning
    return "classifier"


@pytest.mark.parametrize("model", sorted(p.stem for p in (configs_dir() / "model").glob("*.yaml")))
def test_every_model_config_belongs_to_a_family(model):
    assert family_of(model) in FAMILIES


# ------------------------------------------------------------------ the tricks and their effects

Run = dict  # what a check reads: summary.json, the metric lines, and the diagnostics lines


def first_update(run: Run) -> dict:
    return run["summary"]["applied"]["updates"][0]


def train_lines(run: Run) -> list[dict]:
    return [m for m in run["metrics"] if m["split"] == "train"]


@dataclasses.dataclass(frozen=True)
class Trick:
    overrides: Callable[[str], list[str]]  # the family's overrides that turn the trick on
    shows: Callable[[Run], bool]  # its effect in a run folder
    in_range_test: Callable[[dict], bool] | None  # its effect in lr_find.json; None: not a range-test matter


def same(overrides: list[str]) -> Callable[[str], list[str]]:
    return lambda family: overrides


def lookahead(family: str) -> list[str]:
    if family == "gan":  # a GAN's optimizers are gan.g and gan.d
        return ["optimizer@gan.g=lookahead", "optimizer@gan.g.inner=gan_adam"]
    return ["optimizer=lookahead", "optimizer@optimizer.inner=adamw"]


TRICKS = {
    "ema": Trick(same(["trainer.ema.decay=0.5"]),
                 lambda run: first_update(run)["ema_updates"] == STEPS
                 and any(k.startswith("ema_") for m in run["metrics"] if m["split"] == "val" for k in m),
                 None),
    "clip_agc": Trick(same(["trainer.clip_agc=0.01"]),
                      lambda run: all("grad_norm_post_clip" in m for m in train_lines(run))
                      and first_update(run)["clipping"].get("agc") == 0.01,
                      lambda found: found["applied"]["updates"][0]["clipping"].get("agc") == 0.01),
    "clip_value": Trick(same(["trainer.clip_value=1e-4"]),
                        lambda run: all(m["grad_norm_post_clip"] <= m["grad_norm"] for m in train_lines(run)),
                        lambda found: found["applied"]["updates"][0]["clipping"].get("value") == 1e-4),
    "clip_norm": Trick(same(["trainer.clip_norm=1e-4"]),
                       lambda run: all(m["clip_fraction"] == 1.0 for m in train_lines(run)),
                       lambda found: found["applied"]["updates"][0]["clipping"].get("norm") == 1e-4),
    "nonfinite_skip": Trick(same(["trainer.nonfinite=skip"]),
                            lambda run: all(m["skipped_steps"] == 0 for m in train_lines(run)),
                            lambda found: found["applied"]["updates"][0]["nonfinite"] == "skip"),
    "diagnostics": Trick(same(["trainer.diagnostics_every=1"]),
                         lambda run: [d["step"] for d in run["diagnostics"]] == list(range(1, STEPS + 1)),
                         None),
    "accumulation": Trick(same(["trainer.accumulation_steps=2"]),
                          lambda run: run["summary"]["applied"]["micro_batches_per_update"] == 2
                          and run["summary"]["effective_batch_size"] == 16,
                          lambda found: found["applied"]["micro_batches_per_update"] == 2),
    "bf16": Trick(same(["trainer.precision=bf16"]),
                  lambda run: all(u["autocast"] == "bfloat16" for u in run["summary"]["applied"]["updates"]),
                  lambda found: found["applied"]["updates"][0]["autocast"] == "bfloat16"),
    "compile": Trick(same(["trainer.compile=true"]),
                     lambda run: run["summary"]["applied"]["compiled"],
                     lambda found: found["applied"]["compiled"]),
    "channels_last": Trick(same(["trainer.channels_last=true"]),
                           lambda run: run["summary"]["applied"]["channels_last"],
                           lambda found: found["applied"]["channels_last"]),
    "lookahead": Trick(lookahead,
                       lambda run: first_update(run)["optimizer"] == "Lookahead",
                       lambda found: found["applied"]["updates"][0]["optimizer"] == "Lookahead"),
}

# Trainer settings that are not tricks, and why each needs no combination here.
NOT_TRICKS = {
    "epochs": "the run's length (trainer.max_steps wins; tested in test_run.py)",
    "max_steps": "the run's length",
    "device": "where the run is (CUDA is checked by benchmarks/gpu_check.py)",
    "devices": "processes started by torchrun (test_distributed.py, which refuses GANs)",
    "strategy": "how processes share the work (test_distributed.py)",
    "clip_norm_type": "a parameter of clip_norm",
    "seed": "the run's randomness (test_reliability.py)",
    "deterministic": "kernel choice (test_reliability.py)",
    "eval_every": "a schedule of evaluations",
    "checkpoint_every": "a schedule of checkpoints",
    "log_every": "a schedule of train lines",
    "resume": "where a run starts (test_reliability.py)",
    "monitor": "which metric decides best.pt (validated against the workload's metrics)",
    "monitor_mode": "a parameter of monitor",
    "progress": "the terminal only",
    "tensorboard": "tb/ only",
    "mlflow": "the MLflow store only (test_records.py)",
    "mlflow_tracking_uri": "a parameter of mlflow",
    "early_stopping": "when a run ends (test_early_stopping.py)",
}

# Combinations a workload cannot honour: refused before compute, naming the key.
REFUSED = {
    ("channels_last", "lm"): "trainer.channels_last",
    ("channels_last", "bert"): "trainer.channels_last",
}


def test_every_trainer_setting_is_a_trick_or_says_why_not():
    tricks = {"ema": "ema", "clip_agc": "clip_agc", "clip_value": "clip_value", "clip_norm": "clip_norm",
              "nonfinite_skip": "nonfinite", "diagnostics": "diagnostics_every",
              "accumulation": "accumulation_steps", "bf16": "precision", "compile": "compile",
              "channels_last": "channels_last"}
    settings = {f.name for f in dataclasses.fields(TrainerConfig)}
    assert settings == set(tricks.values()) | set(NOT_TRICKS)
    assert set(tricks) | {"lookahead"} == set(TRICKS)


@pytest.fixture
def eager_compile(monkeypatch):
    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend="eager"))


CASES = [(trick, family) for trick in TRICKS for family in FAMILIES]


def overrides_of(trick: str, family: str) -> list[str]:
    return [*FAMILIES[family], *QUIET, *TRICKS[trick].overrides(family)]


@pytest.mark.parametrize(("trick", "family"), CASES)
def test_run(trick, family, tmp_path, eager_compile):
    """The run's own pre-flight, then the trainer: the effect is in the run folder."""
    overrides = [*overrides_of(trick, family), f"hydra.run.dir={tmp_path / 'run'}"]
    if (trick, family) in REFUSED:
        with pytest.raises(ConfigError, match=REFUSED[trick, family].replace(".", r"\.")):
            validate_overrides(overrides, multirun=False)
        return
    validate_overrides(overrides, multirun=False)
    cfg = job_config(overrides)
    folder = tmp_path / "run"
    trainer_class(cfg)(cfg, folder).fit()
    diagnostics = folder / "diagnostics.jsonl"
    run = {"summary": read_summary(folder), "metrics": read_metrics(folder),
           "diagnostics": [json.loads(line) for line in diagnostics.read_text().splitlines()]}
    assert run["summary"]["status"] == "completed"
    assert TRICKS[trick].shows(run), json.dumps(run["summary"]["applied"])


@pytest.mark.parametrize(("trick", "family"), CASES)
def test_lr_find(trick, family, tmp_path, capsys, eager_compile):
    """The range test takes the run's update: its lr_find.json says what it applied, and what of
    the run's settings a range test does not use (EMA, diagnostics, the schedule)."""
    out = tmp_path / "lr_find"
    status = lr_find.main(["--steps", "5", "--out", str(out), *overrides_of(trick, family)])
    err = capsys.readouterr().err
    if family == "gan" or (trick, family) in REFUSED:
        assert status == 2 and "Traceback" not in err and not out.exists()
        assert ("GAN" in err) if family == "gan" else (REFUSED[trick, family] in err)
        return
    assert status == 0, err
    found = json.loads((out / "lr_find.json").read_text())
    check = TRICKS[trick].in_range_test
    if check is None:  # EMA and diagnostics: named as not used by the range test
        key = {"ema": "trainer.ema.decay", "diagnostics": "trainer.diagnostics_every"}[trick]
        assert key in found["not_used"]
    else:
        assert check(found), json.dumps(found["applied"])


@pytest.mark.parametrize("family", FAMILIES)
def test_compare(family, tmp_path, monkeypatch, eager_compile):
    """A comparison's runs are ordinary runs: every trick a family honours, all at once, shows in
    each of its run folders; a GAN (which trains with gan.g and gan.d) is refused before compute."""
    from optbench.commands import compare

    monkeypatch.chdir(tmp_path)
    honoured = [t for t in TRICKS if (t, family) not in REFUSED]
    overrides = [o for t in honoured for o in TRICKS[t].overrides(family)]
    args = ["budget.trials=1", "budget.seeds=1", *FAMILIES[family], *QUIET, *overrides, "hydra.sweep.dir=cmp"]
    status = compare.main(args)
    if family == "gan":
        assert status == 2 and not (tmp_path / "cmp" / "search").exists()
        return
    assert status == 0
    folders = sorted(p.parent for p in (tmp_path / "cmp").rglob("summary.json"))
    assert len(folders) == 2  # the search's trial, then the best trial's seed
    for folder in folders:
        diagnostics = (folder / "diagnostics.jsonl").read_text().splitlines()
        run = {"summary": read_summary(folder), "metrics": read_metrics(folder),
               "diagnostics": [json.loads(line) for line in diagnostics]}
        for trick in honoured:
            assert TRICKS[trick].shows(run), (folder, trick)
