"""Weight decay in every `params` preset on every model: timm's convention, checked parameter by parameter.

No decay for tensors of at most one dimension, biases, normalisation weights, position embeddings,
class tokens and whatever a model's own `no_weight_decay()` names; every other parameter keeps the
optimizer's decay. `params=none` is the one preset that groups nothing: all decayed, as torch does
with `model.parameters()`. The expectation is written out here from those words, not from
`optbench.param_groups.no_weight_decay`, so that the two check each other.
"""

from __future__ import annotations

import functools

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from optbench.build import build_data, build_model, build_param_groups
from optbench.commands.listing import print_param_groups
from optbench.config import compose
from optbench.errors import ConfigError
from optbench.paths import configs_dir

# Every model config, built tiny (with data it reads).
MODELS = {
    "bert": ["data=counting", "data.train_size=64", "data.val_size=16", "model.dim=16", "model.depth=1",
             "model.heads=2"],
    "dcgan": ["data=digit_images", "data.size=16", "model.g_width=4", "model.d_width=4"],
    "gan_ring": ["data=ring", "data.train_size=64", "model.hidden=8"],
    "linear": [],
    "mlp": ["model.hidden=[8]"],
    "mlp_bn": ["model.hidden=[8,4]"],
    "resnet": ["data=synthetic", "data.input_shape=[3,8,8]", "data.train_size=64", "data.val_size=16"],
    "resnet18": ["data=synthetic", "data.input_shape=[3,8,8]", "data.train_size=64", "data.val_size=16"],
    "rnn": ["data=counting", "data.train_size=64", "data.val_size=16", "model.embed_dim=8", "model.hidden=8"],
    "timm": ["model.model_name=resnet10t"],
    "torchvision": ["data=synthetic", "data.input_shape=[3,8,8]", "data.train_size=64", "data.val_size=16"],
    "tv_resnet": ["data=synthetic", "data.input_shape=[3,8,8]", "data.train_size=64", "data.val_size=16",
                  "model.arch=resnet18"],
    "tv_vit": ["data=synthetic", "data.input_shape=[3,8,8]", "data.train_size=64", "data.val_size=16",
               "model.patch_size=4", "model.num_layers=1", "model.num_heads=2", "model.hidden_dim=8",
               "model.mlp_dim=8"],
    "vit": ["data=synthetic", "data.input_shape=[3,8,8]", "data.train_size=64", "data.val_size=16", "data.batch_size=16",
            "model.depth=1", "model.dim=8", "model.heads=2"],
}
PRESETS = sorted(p.stem for p in (configs_dir() / "params").glob("*.yaml"))
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
# Position embeddings and class tokens of optbench's models (timm's names, torchvision's, BERT's).
EMBEDDINGS = {"pos_embed", "cls_token", "pos_embedding", "class_token", "positions"}
DECAY = 0.05


def test_every_model_config_is_covered():
    assert set(MODELS) == {p.stem for p in (configs_dir() / "model").glob("*.yaml")}


@functools.cache
def networks(model: str) -> dict[str, nn.Module]:
    """The networks that a run of `model=NAME` builds its parameter groups on (a GAN: two)."""
    cfg = compose([f"model={model}", *MODELS[model]])
    built = build_model(cfg.model, build_data(cfg.data))
    if hasattr(built, "generator"):
        return {"generator": built.generator, "discriminator": built.discriminator}
    return {"model": built}


def without_decay(net: nn.Module) -> set[str]:
    """What the convention exempts from weight decay, name by name."""
    norms = {f"{prefix}.{name}".lstrip(".") for prefix, module in net.named_modules() if isinstance(module, NORMS)
             for name, _ in module.named_parameters(recurse=False)}
    own = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    exempt = set()
    for name, param in net.named_parameters():
        last = name.rsplit(".", 1)[-1]  # bias, in_proj_bias, bias_ih_l0, pos_embed, ...
        if param.ndim <= 1 or "bias" in last or name in norms or last in EMBEDDINGS or name in own:
            exempt.add(name)
    return exempt


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("preset", PRESETS)
def test_weight_decay_follows_the_convention(preset, model):
    node = OmegaConf.load(configs_dir() / "params" / f"{preset}.yaml")
    for net in networks(model).values():
        names = dict(net.named_parameters())
        has_head = any(n.startswith("head.") for n in names)
        if preset == "backbone_head" and (not has_head or all(n.startswith("head.") for n in names)):
            with pytest.raises(ConfigError, match="matches no parameter"):  # no head, or nothing but one
                build_param_groups(node, net, 1.0)
            continue
        optimizer = torch.optim.AdamW(build_param_groups(node, net, 1.0), weight_decay=DECAY)
        decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        assert len(decay) == len(names)
        exempt = set() if preset == "none" else without_decay(net)
        wrong = {n: decay[id(p)] for n, p in names.items() if decay[id(p)] != (0.0 if n in exempt else DECAY)}
        assert wrong == {}, f"params={preset} model={model}: these parameters have the wrong weight decay"


def test_vits_declare_their_position_embeddings_and_class_tokens():
    assert networks("vit")["model"].no_weight_decay() == {"pos_embed", "cls_token"}
    tv_vit = networks("tv_vit")["model"]
    assert tv_vit.no_weight_decay() <= {n for n, _ in tv_vit.named_parameters()}
    assert networks("bert")["model"].no_weight_decay() == {"embed.positions"}


def test_param_group_table_shows_the_decay_users_check(capsys):
    """`optbench list param-groups model=vit params=layer_decay`: pos_embed, cls_token, norms and
    biases at weight decay 0, the weights at the optimizer's."""
    overrides = ["model=vit", *MODELS["vit"], "params=layer_decay", f"optimizer.weight_decay={DECAY}"]
    assert print_param_groups(overrides) == 0
    rows = {line.split("│")[1].strip(): line.split("│")[-2].strip()
            for line in capsys.readouterr().out.splitlines() if line.count("│") == 7}
    assert {rows[n] for n in ("pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.0.norm1.weight")} == {"0"}
    assert rows["head.weight"] == rows["blocks.0.mlp.0.weight"] == f"{DECAY:g}"
