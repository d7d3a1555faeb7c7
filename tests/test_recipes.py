"""Every recipe: its hyperparameters in the resolved config, and a run at smoke scale (`smoke=true`)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import read_summary, run_cli, run_dirs
from optbench.config import compose, job_config
from optbench.gan_trainer import trainer_class
from optbench.paths import recipes_dir

RECIPES = sorted(p.stem for p in recipes_dir().glob("*.yaml"))

# The chapter's hyperparameters (sections 7.2-7.3), as dotted keys of the resolved config.
EXPECTED = {
    "imagenet_resnet50": {"model._target_": "optbench.models.TorchvisionResNet", "model.arch": "resnet50",
                          "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.1, "optimizer.momentum": 0.9,
                          "optimizer.weight_decay": 1e-4, "scheduler._target_": "optbench.schedules.Cosine",
                          "scheduler.warmup": "5ep", "trainer.epochs": 90, "data.batch_size": 256,
                          "data._target_": "optbench.datasets.vision.imagenet"},
    "cifar10_resnet18_sgd": {"model.depth": 18, "optimizer._target_": "torch.optim.SGD", "optimizer.nesterov": True,
                             "optimizer.lr": 0.1, "optimizer.weight_decay": 5e-4, "scheduler.warmup": 0,
                             "scheduler._target_": "optbench.schedules.Cosine", "trainer.epochs": 200,
                             "data.name": "cifar10"},
    "cifar10_resnet18_adamw": {"model.depth": 18, "optimizer._target_": "torch.optim.AdamW",
                               "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.01,
                               "scheduler._target_": "optbench.schedules.Cosine", "trainer.epochs": 100,
                               "data.name": "cifar10"},
    "bert_pretrain": {"model._target_": "optbench.models.Bert", "optimizer._target_": "torch.optim.AdamW",
                      "optimizer.lr": 1e-4, "optimizer.eps": 1e-6, "optimizer.weight_decay": 0.01,
                      "optimizer.betas": [0.9, 0.999], "scheduler._target_": "optbench.schedules.Polynomial",
                      "scheduler.power": 1.0, "scheduler.warmup": 0.1, "trainer.accumulation_steps": 4,
                      "trainer.clip_norm": 1.0},
    "bert_finetune": {"model._target_": "optbench.models.Bert", "optimizer._target_": "torch.optim.AdamW",
                      "optimizer.lr": 2e-5, "optimizer.weight_decay": 0.01, "params.rules.0.pattern": "^head\\.",
                      "params.rules.0.lr_scale": 10.0, "scheduler._target_": "optbench.schedules.Cosine",
                      "scheduler.warmup": 0.1, "trainer.clip_norm": 1.0},
    "dcgan": {"model._target_": "optbench.models.DCGAN", "gan.g._target_": "torch.optim.Adam", "gan.g.lr": 2e-4,
              "gan.g.betas": [0.5, 0.999], "gan.d._target_": "torch.optim.Adam", "gan.d.lr": 2e-4,
              "gan.d.betas": [0.5, 0.999], "gan.g_scheduler._target_": "optbench.schedules.Constant",
              "gan.d_scheduler._target_": "optbench.schedules.Constant", "trainer.clip_norm": None},
    "vit_b16": {"model._target_": "optbench.models.TorchvisionViT", "model.patch_size": 16, "model.hidden_dim": 768,
                "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 3e-3, "optimizer.weight_decay": 0.3,
                "scheduler._target_": "optbench.schedules.Cosine", "scheduler.warmup": 0.05,
                "scheduler.min_lr_ratio": 0.01, "trainer.clip_norm": 1.0},
    "rnn_lstm": {"model._target_": "optbench.models.RNN", "model.cell": "lstm",
                 "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 1e-3, "trainer.clip_norm": 1.0},
    "rnn_exploding": {"model.cell": "lstm", "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 20.0,
                      "optimizer.momentum": 0.0, "trainer.clip_norm": None, "trainer.log_every": 1,
                      "trainer.diagnostics_every": 1},
    "transformer_llrd": {"model._target_": "optbench.models.Bert", "params.decay": 0.95,
                         "params._target_": "optbench.param_groups.LayerDecay",
                         "optimizer._target_": "torch.optim.AdamW", "optimizer.lr": 1e-4},
    "gan_ring": {"model._target_": "optbench.models.RingGAN", "gan.g.betas": [0.5, 0.999],
                 "gan.d.betas": [0.5, 0.999]},
    "digits_resnet20": {"model.depth": 20, "optimizer.nesterov": True, "optimizer.lr": 0.1},
    "digits_scheduler_ablation": {"model.depth": 20, "data._target_": "optbench.data.digits",
                                  "optimizer._target_": "torch.optim.SGD", "optimizer.momentum": 0.9,
                                  "optimizer.lr": 0.1, "trainer.eval_every": 4,
                                  "hydra.sweeper.params": {"scheduler": "none,step,cosine,onecycle,warmup_cosine"}},
    # The chapter's experiments: each arm of a sweep (hydra.sweeper.params) differs only in the swept keys.
    "sgd_variants": {"model.hidden": [], "data._target_": "optbench.datasets.regression.least_squares",
                     "data.condition": 100.0, "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.1,
                     "scheduler._target_": "optbench.schedules.Constant",
                     "hydra.sweeper.params": {"optimizer": "sgd,momentum,nesterov", "trainer.seed": "0,1,2"}},
    "adam_vs_adamw": {"optimizer._target_": "torch.optim.Adam", "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.1,
                      "trainer.diagnostics_every": 10,
                      "hydra.sweeper.params": {"optimizer": "adam,adamw", "trainer.seed": "0,1,2"}},
    "optimizer_comparison": {"data._target_": "optbench.data.digits", "trainer.epochs": 20,
                             "hydra.sweeper.params.optimizer": "momentum,adam,adamw,lamb,adafactor,lion,adam8bit,sophia"},
    "scheduler_ablation": {"model.depth": 18, "data.name": "cifar10", "optimizer._target_": "torch.optim.SGD",
                           "optimizer.momentum": 0.9, "optimizer.lr": 0.1,
                           "hydra.sweeper.params": {"scheduler": "none,step,cosine,onecycle,warmup_cosine"}},
    "large_batch": {"model.depth": 18, "data.name": "cifar10", "data.batch_size": 64, "trainer.accumulation_steps": 16,
                    "scheduler.warmup": "5ep",
                    "hydra.sweeper.params": {"batching": "accumulate_64x16,direct_1024", "optimizer": "momentum,lars"}},
    "large_batch_proxy": {"data._target_": "optbench.data.synthetic", "data.train_size": 65536, "model.hidden": [128, 128],
                          "optimizer.lr_scaling": "linear", "optimizer.reference_batch": 256, "scheduler.warmup": 0.1,
                          "trainer.epochs": 8, "hydra.sweeper.params": {"optimizer": "momentum,lars",
                                                                        "data.batch_size": "256,8192",
                                                                        "trainer.seed": "0,1,2"}},
}


def test_every_recipe_is_checked():
    assert sorted(EXPECTED) == RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_resolves_to_the_chapter_hyperparameters(recipe):
    cfg = OmegaConf.to_container(compose([f"recipe={recipe}"]), resolve=False)
    for key, expected in EXPECTED[recipe].items():
        value = cfg
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        assert value == expected, f"{recipe}: {key}={value!r}, expected {expected!r}"
    assert cfg["smoke_overrides"], f"{recipe} has no smoke_overrides"
    text = (recipes_dir() / f"{recipe}.yaml").read_text()
    description = text.splitlines()[1]  # the line `optbench list recipes` shows
    assert description.startswith("# ") and f"optbench run recipe={recipe}" in text


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_at_smoke_scale(recipe, tmp_path):
    cfg = job_config([f"recipe={recipe}", "smoke=true", "trainer.progress=false", "trainer.tensorboard=false"])
    summary = trainer_class(cfg)(cfg, tmp_path).fit()
    assert summary["status"] == "completed"
    assert summary["steps"] == 3


def test_smoke_is_one_override_on_the_command_line(workdir):
    result = run_cli("run", "recipe=vit_b16", "smoke=true", "trainer.progress=false", cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(workdir / "outputs")
    summary = read_summary(run_dir)
    assert summary["steps"] == 3 and summary["config"]["optimizer"]["lr"] == 3e-3  # the recipe, made tiny


def test_smoke_without_a_recipe_is_refused(workdir):
    result = run_cli("run", "smoke=true", cwd=workdir)
    assert result.returncode == 2
    assert "smoke_overrides" in result.stderr and "Traceback" not in result.stderr
