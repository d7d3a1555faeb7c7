"""Unit tests of the pieces a run is built from: data, models, value checks, checkpoints."""

from __future__ import annotations

import typing

import pytest
import torch

from optbench import checkpoint
from optbench.data import digits, synthetic
from optbench.errors import ConfigError
from optbench.models import MLP, ResNet
from optbench.schema import Fraction, PositiveInt, TrainerConfig, check_value


def test_digits_is_a_fixed_held_out_split():
    data = digits(batch_size=100)
    assert data.spec.input_shape == (1, 8, 8) and data.spec.num_classes == 10
    assert data.num_train + len(data.y_val) == 1797
    assert len(data.y_val) == round(1797 * 0.2)
    again = digits(batch_size=100)
    assert torch.equal(data.x_val, again.x_val)  # the same test set for every run
    assert abs(data.x_train.mean().item()) < 1e-5 and abs(data.x_train.std().item() - 1) < 1e-5


def test_batch_order_is_a_function_of_seed_and_epoch_and_can_start_anywhere():
    data = synthetic(batch_size=10, input_shape=(4,), train_size=95, val_size=5)
    assert data.batches_per_epoch == 10  # the last, short batch is kept
    full = list(data.train_batches(seed=1, epoch=2))
    assert [len(y) for _, y in full] == [10] * 9 + [5]
    tail = list(data.train_batches(seed=1, epoch=2, start=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[4:], tail))
    other_epoch = next(data.train_batches(seed=1, epoch=3))
    assert not torch.equal(full[0][0], other_epoch[0])
    seen = torch.cat([x for x, _ in full])
    assert torch.equal(seen.sort(dim=0).values, data.x_train.sort(dim=0).values)  # a permutation


def test_synthetic_labels_are_learnable_and_shapes_follow_config():
    data = synthetic(batch_size=8, input_shape=(3, 4, 4), num_classes=5, train_size=64, val_size=16)
    assert data.x_train.shape == (64, 3, 4, 4) and data.spec.num_classes == 5
    assert data.y_train.max() < 5


@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (32, 0.46e6), (56, 0.85e6)])
def test_cifar_resnet_sizes_match_he_et_al(depth, params):
    # He et al. (2016), Table 6: 0.27M, 0.46M, 0.85M parameters (option A shortcuts; our 1x1
    # projection shortcuts add about 1-2%).
    model = ResNet(input_shape=(3, 32, 32), num_classes=10, depth=depth)
    count = sum(p.numel() for p in model.parameters())
    assert params <= count <= params * 1.03
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_with_3x3_stem():
    model = ResNet(input_shape=(3, 32, 32), num_classes=10, depth=18)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the usual CIFAR ResNet-18
    assert model.stem[0].kernel_size == (3, 3)


def test_resnet_rejects_other_depths():
    with pytest.raises(ConfigError, match="model.depth=21"):
        ResNet(input_shape=(1, 8, 8), num_classes=10, depth=21)


def test_mlp_head_is_named_for_parameter_rules():
    model = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(32,))
    assert [n for n, _ in model.named_parameters()][-2:] == ["head.weight", "head.bias"]
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize(
    "annotation,value,ok",
    [
        (PositiveInt, 1, True), (PositiveInt, 0, False), (PositiveInt, 1.5, False),
        (PositiveInt, True, False), (PositiveInt, "abc", False),
        (Fraction, 0.0, True), (Fraction, 1.0, False), (Fraction, -0.1, False),
        (typing.Optional[PositiveInt], None, True),
        (typing.Literal["32", "bf16", "16"], 32, True), (typing.Literal["32", "bf16", "16"], 8, False),
        (tuple[int, ...], [3, 32, 32], True), (tuple[int, ...], [3, "a"], False),
    ],
)
def test_check_value(annotation, value, ok):
    assert (check_value(annotation, value) is None) == ok


def test_trainer_config_fields_match_the_yaml():
    from omegaconf import OmegaConf

    from optbench.paths import configs_dir

    yaml_keys = set(OmegaConf.load(configs_dir() / "trainer" / "default.yaml").keys())
    assert yaml_keys == set(TrainerConfig.field_types())


def test_checkpoint_is_atomic_and_loads_without_code(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    checkpoint.save_atomic({"model": {"w": torch.ones(2)}, "progress": {"step": 1}}, path)
    assert checkpoint.load(path)["progress"]["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_truncated_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    checkpoint.save_atomic({"model": {}, "progress": {}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(ConfigError, match="not a readable optbench checkpoint"):
        checkpoint.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(ConfigError, match="not an optbench checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = checkpoint.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
