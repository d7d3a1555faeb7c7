"""Training tricks: accumulation, precision, clipping, parameter groups, EMA, divergence, diagnostics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY, read_metrics, read_summary, run_cli, run_dirs
from optbench.build import build_data, build_model, build_param_groups
from optbench.clipping import adaptive_clip_, unitwise_norm
from optbench.config import job_config
from optbench.tasks import Classification
from optbench.trainer import Trainer

QUIET = ["trainer.progress=false", "trainer.tensorboard=false"]


def make(overrides: list[str], run_dir) -> Trainer:
    return Trainer(job_config([*QUIET, *overrides]), run_dir)


# --------------------------------------------------------------------------- accumulation

ACCUMULATION = [
    "model=mlp", "model.hidden=[32]", "data=synthetic", "data.input_shape=[16]", "data.train_size=128",
    "data.val_size=32", "params=none", "optimizer=momentum", "optimizer.lr=0.05",
    "scheduler=warmup_cosine", "trainer.max_steps=8", "trainer.clip_norm=0.5", "trainer.log_every=1",
]


def accumulated_vs_whole(tmp_path, extra: list[str], float64: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    runs = []
    for name, batch, k in (("micro", 8, 4), ("whole", 32, 1)):
        trainer = make([*ACCUMULATION, *extra, f"data.batch_size={batch}", f"trainer.accumulation_steps={k}"],
                       tmp_path / name)
        if float64:
            trainer.model.double()
            trainer.data.x_train, trainer.data.x_val = trainer.data.x_train.double(), trainer.data.x_val.double()
        assert trainer.total_steps == 8 and trainer.steps_per_epoch == 4
        trainer.fit()
        runs.append([p.detach().clone() for p in trainer.model.parameters()])
    return runs[0], runs[1]


def test_accumulation_equals_one_big_batch_float32(tmp_path):
    # 4 micro-batches of 8 against batches of 32: same samples per step, clipping and a schedule on.
    micro, whole = accumulated_vs_whole(tmp_path, [], float64=False)
    for a, b in zip(micro, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_accumulation_equals_one_big_batch_float64(tmp_path):
    micro, whole = accumulated_vs_whole(tmp_path, ["optimizer.fused=false"], float64=True)
    for a, b in zip(micro, whole):
        # Only the order of additions differs: equal to float64 rounding.
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_short_last_group_steps_with_what_it_had(tmp_path):
    # 1,438 digits in batches of 128 -> 12 micro-batches; groups of 5: 5, 5, then a group of 2.
    trainer = make(["trainer.epochs=1", "trainer.accumulation_steps=5", "trainer.log_every=1"], tmp_path)
    summary = trainer.fit()
    assert summary["steps"] == 3 and summary["epochs"] == pytest.approx(1.0)
    assert summary["effective_batch_size"] == 640
    assert sum(1 for m in read_metrics(tmp_path) if m["split"] == "train") == 3


# --------------------------------------------------------------------------- precision

def test_bf16_autocast_on_cpu_matches_fp32_accuracy(tmp_path):
    fp32 = make([], tmp_path / "fp32").fit()["final"]["val/acc"]
    bf16 = make(["trainer.precision=bf16"], tmp_path / "bf16").fit()["final"]["val/acc"]
    assert fp32 >= 0.95
    assert abs(bf16 - fp32) <= 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA")
def test_fp16_with_grad_scaler_on_cuda(tmp_path):
    trainer = make(["trainer.precision=16", "trainer.max_steps=20", "trainer.log_every=5"], tmp_path)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["final"]["val/acc"] > 0.5
    train = [m for m in read_metrics(tmp_path) if m["split"] == "train"]
    assert all("loss_scale" in m and "scaler_skipped" in m for m in train)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["scaler"]["scale"] > 0


# --------------------------------------------------------------------------- clipping

def test_clip_fraction_and_post_clip_norm_are_logged(tmp_path):
    make([*TINY[:2], "trainer.clip_norm=1e-3"], tmp_path).fit()
    train = [m for m in read_metrics(tmp_path) if m["split"] == "train"]
    assert all(m["clip_fraction"] == 1.0 for m in train)  # a tiny limit clips every step
    # Measured after clipping: torch scales by limit / (norm + 1e-6), a hair under the limit.
    assert all(m["grad_norm_post_clip"] == pytest.approx(1e-3, rel=1e-5) for m in train)
    assert all(m["grad_norm"] > 1e-3 for m in train)


def test_max_norm_clipping(tmp_path):
    make([*TINY[:2], "trainer.clip_norm=0.01", "trainer.clip_norm_type=inf"], tmp_path).fit()
    assert all(m["grad_norm_post_clip"] <= 0.01 for m in read_metrics(tmp_path) if m["split"] == "train")


def test_adaptive_gradient_clipping_bounds_each_unit():
    weight = torch.nn.Parameter(torch.randn(6, 4))
    weight.grad = torch.randn(6, 4) * 100
    adaptive_clip_([weight], clip=0.01)
    ratio = unitwise_norm(weight.grad) / unitwise_norm(weight.detach())
    assert torch.all(ratio <= 0.01 + 1e-6)
    small = torch.nn.Parameter(torch.ones(3))
    small.grad = torch.full((3,), 1e-6)
    adaptive_clip_([small], clip=0.01)
    assert torch.equal(small.grad, torch.full((3,), 1e-6))  # under the limit: untouched


def gradient_norm(model: torch.nn.Module) -> float:
    """The 2-norm of all of `model`'s gradients as one vector, computed here, not by optbench."""
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()


def test_agc_logs_the_norm_before_it_clips_and_the_norm_after(tmp_path, monkeypatch):
    """With trainer.clip_agc, `grad_norm` (TensorBoard's grad_norm/pre_clip) is the norm of the
    gradients AGC receives, `grad_norm_post_clip` the norm of what it leaves: each checked against
    a norm computed from the model's gradients at that moment."""
    import optbench.update

    trainer = make(["trainer.max_steps=3", "trainer.log_every=1", "trainer.clip_agc=1e-3"], tmp_path)
    norms = []
    agc = optbench.update.adaptive_clip_

    def measured(params, clip):
        before = gradient_norm(trainer.model)
        agc(params, clip)
        norms.append((before, gradient_norm(trainer.model)))

    monkeypatch.setattr(optbench.update, "adaptive_clip_", measured)
    trainer.fit()
    train = [m for m in read_metrics(tmp_path) if m["split"] == "train"]
    assert [m["grad_norm"] for m in train] == pytest.approx([before for before, _ in norms], rel=1e-5)
    assert [m["grad_norm_post_clip"] for m in train] == pytest.approx([after for _, after in norms], rel=1e-5)
    # AGC clipped (the head, which it leaves alone, keeps the norm from falling further): a norm
    # measured after it, logged as the pre-clip one, would fail the first assertion.
    assert all(after < 0.8 * before for before, after in norms)


# --------------------------------------------------------------------------- parameter groups

def groups_of(overrides: list[str]) -> tuple[torch.nn.Module, dict[str, dict]]:
    cfg = job_config(overrides)
    model = build_model(cfg.model, build_data(cfg.data))
    groups = build_param_groups(cfg.params, model, lr=1.0)
    names = {p: n for n, p in model.named_parameters()}
    return model, {names[p]: g for g in groups for p in g["params"]}


@pytest.mark.parametrize("model", [["model=resnet"], ["model=vit", "data=synthetic", "model.depth=4"]])
def test_no_decay_preset(model):
    net, by_name = groups_of([*model, "params=no_decay"])
    assert set(by_name) == {n for n, _ in net.named_parameters()}
    for name, param in net.named_parameters():
        group = by_name[name]
        assert group["lr"] == 1.0
        # the ViT's position embedding and class token too (every preset x model: test_param_groups_decay.py)
        assert (group.get("weight_decay") == 0.0) == (param.ndim == 1 or name in ("pos_embed", "cls_token")), name


def test_layer_decay_preset_on_resnet20():
    net, by_name = groups_of(["model=resnet", "params=layer_decay", "params.decay=0.5"])
    depth = 1 + 9 + 1  # stem, 9 residual blocks, head
    for name, param in net.named_parameters():
        if name.startswith("stem."):
            layer = 0
        elif name.startswith("head."):
            layer = depth - 1
        else:  # layerS.B.*: stage S of 3 blocks
            stage, block = name.split(".")[:2]
            layer = 1 + 3 * (int(stage.removeprefix("layer")) - 1) + int(block)
        assert by_name[name]["lr"] == 0.5 ** (depth - 1 - layer), name
        assert (by_name[name].get("weight_decay") == 0.0) == (param.ndim == 1), name


def test_layer_decay_preset_on_vit():
    net, by_name = groups_of(["model=vit", "data=synthetic", "model.depth=4", "params=layer_decay",
                              "params.decay=0.75"])
    depth = 1 + 4 + 1  # embeddings, 4 blocks, norm + head
    for name in by_name:
        if name.split(".")[0] in ("patch_embed", "cls_token", "pos_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = 1 + int(name.split(".")[1])
        else:
            layer = depth - 1
        assert by_name[name]["lr"] == pytest.approx(0.75 ** (depth - 1 - layer)), name


def test_backbone_head_and_discriminative_presets():
    _, by_name = groups_of(["model=resnet", "params=backbone_head"])
    assert by_name["head.weight"]["lr"] == 10.0 and by_name["layer3.2.conv2.weight"]["lr"] == 1.0
    _, by_name = groups_of(["model=resnet", "params=discriminative", "params.factor=2"])
    # stages: stem, layer1, layer2, layer3, head -> head 1, layer3 1/2, ..., stem 1/16
    assert by_name["head.weight"]["lr"] == 1.0
    assert by_name["layer3.0.conv1.weight"]["lr"] == 0.5
    assert by_name["stem.0.weight"]["lr"] == 1 / 16


def test_param_group_table_command(workdir):
    result = run_cli("list", "param-groups", "model=resnet", "params=layer_decay", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "layer00_no_decay" in result.stdout and "head.weight" in result.stdout


def test_every_group_lr_is_logged(tmp_path):
    make([*TINY[:2], "params=backbone_head", "model=resnet"], tmp_path).fit()
    line = next(m for m in read_metrics(tmp_path) if m["split"] == "train")
    assert line["lr"] == pytest.approx(10 * line["lr/body"])  # the head (first group) at 10x
    assert line["lr/body"] == line["lr/body_no_decay"]


# --------------------------------------------------------------------------- EMA, diagnostics

def test_weight_ema_equals_torchs_averaged_model():
    """WeightEMA against torch.optim.swa_utils.AveragedModel with the EMA average, buffers included."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from optbench.ema import WeightEMA
    from optbench.models import ResNet

    torch.manual_seed(0)
    model = ResNet(input_shape=(1, 8, 8), num_classes=10, depth=20)
    ours = WeightEMA(model, 0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        model(torch.randn(16, 1, 8, 8)).square().mean().backward()  # train mode: BN statistics move too
        optimizer.step()
        optimizer.zero_grad()
        ours.update()
        reference.update_parameters(model)
    for (name, got), want in zip(ours.module.state_dict().items(), reference.module.state_dict().values()):
        if got.is_floating_point():  # batch norm's step counter follows the model (torch's keeps its first)
            assert torch.equal(got, want), name
    assert ours.module.stem[1].num_batches_tracked == model.stem[1].num_batches_tracked == 5
    restored = WeightEMA(model, 0.9)
    restored.load_state_dict(ours.state_dict())
    assert restored.updates == 5
    assert all(torch.equal(a, b) for a, b in zip(restored.module.state_dict().values(), ours.module.state_dict().values()))


def test_ema_is_evaluated_beside_the_weights_and_checkpointed(tmp_path):
    summary = make([*TINY[:3], "trainer.ema.decay=0.9"], tmp_path).fit()
    assert {"val/ema_acc", "val/ema_loss"} <= summary["final"].keys()
    assert summary["final"]["val/ema_acc"] != summary["final"]["val/acc"]
    assert "ema" in torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)


def test_diagnostics_records(tmp_path):
    make(["trainer.max_steps=6", "trainer.diagnostics_every=3", "model=resnet"], tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert set(records[0]["grad_norm"]) == {"no_decay", "decay"}
    assert "stem.0.weight" in records[0]["update_ratio"] and "head.bias" in records[0]["weight_norm"]
    assert all(0 < v < 1 for v in records[0]["update_ratio"].values())


# --------------------------------------------------------------------------- divergence

def test_huge_lr_diverges_with_step_and_exit_0(workdir):
    result = run_cli("run", *TINY, "trainer.max_steps=30", "optimizer=sgd", "optimizer.lr=1e6", cwd=workdir)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(workdir / "outputs")
    summary = read_summary(run_dir)
    assert summary["status"] == "diverged"
    assert 1 <= summary["divergence"]["step"] <= summary["steps"]
    assert "became non-finite at step" in summary["divergence"]["message"]
    # Its last line (train or val) holds the non-finite loss as null: strict JSON, which any reader accepts.
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    strict = [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl")) for line in lines]
    assert strict[-1]["loss"] is None
    assert all(isinstance(r["loss"], float) for r in strict[:-1])


def test_sweep_goes_on_past_a_diverged_job(workdir):
    result = run_cli("run", "-m", *TINY, "optimizer=sgd", "optimizer.lr=1e6,0.05", cwd=workdir)
    assert result.returncode == 0, result.stderr
    statuses = sorted(read_summary(d)["status"] for d in run_dirs(workdir / "outputs" / "multirun"))
    assert statuses == ["completed", "diverged"]


def poison_step(monkeypatch, at_step: int) -> None:
    """Make the training loss NaN on optimizer step `at_step` only."""
    original = Classification.training_loss

    def loss(self, model, batch):
        value = original(self, model, batch)
        return value * math.nan if poison_step.trainer.step + 1 == at_step else value

    monkeypatch.setattr(Classification, "training_loss", loss)


def test_nonfinite_skip_leaves_weights_and_state_untouched(tmp_path, monkeypatch):
    trainer = make(["trainer.max_steps=6", "trainer.nonfinite=skip", "trainer.log_every=1"], tmp_path)
    poison_step.trainer = trainer
    poison_step(monkeypatch, at_step=3)
    snapshots = {}
    original_step = Trainer.train_step

    def step_and_snapshot(self, micro_batches, measure):
        before = [p.detach().clone() for p in self.model.parameters()]
        state = [v["exp_avg"].clone() for v in self.optimizer.state.values()]
        result = original_step(self, micro_batches, measure)
        after = [p.detach().clone() for p in self.model.parameters()]
        snapshots[self.step + 1] = (before, after, state, [v["exp_avg"].clone() for v in self.optimizer.state.values()])
        return result

    monkeypatch.setattr(Trainer, "train_step", step_and_snapshot)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    before, after, state, state_after = snapshots[3]  # the poisoned update changed nothing
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(a, b) for a, b in zip(state, state_after))
    before, after, _, _ = snapshots[4]  # the next one trains again
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_stop_names_the_step(tmp_path, monkeypatch):
    trainer = make(["trainer.max_steps=6", "trainer.log_every=5"], tmp_path)
    poison_step.trainer = trainer
    poison_step(monkeypatch, at_step=3)
    summary = trainer.fit()
    assert summary["status"] == "diverged"
    assert summary["divergence"]["step"] == 3  # found at the log step 5, reported where it began


# --------------------------------------------------------------------------- bad input

TRICK_BAD_INPUT = [
    (["trainer.accumulation_steps=0"], "trainer.accumulation_steps=0"),
    (["trainer.clip_norm=-1"], "trainer.clip_norm=-1"),
    (["trainer.clip_value=-0.5"], "trainer.clip_value=-0.5"),
    (["trainer.clip_agc=0"], "trainer.clip_agc=0"),
    (["trainer.precision=8"], "trainer.precision=8"),
    (["trainer.ema.decay=1.5"], "trainer.ema.decay=1.5"),
    (["trainer.nonfinite=ignore"], "trainer.nonfinite='ignore'"),
    (["params.rules=[{name: odd, pattern: '^nothing'}, {name: rest}]"], "params.rules[0]"),
]


@pytest.mark.parametrize("args,key", TRICK_BAD_INPUT, ids=[a[0] for a, _ in TRICK_BAD_INPUT])
def test_trick_bad_input(workdir, args, key):
    result = run_cli("run", *TINY, *args, cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- compile, channels_last

def same_weights_after_a_few_steps(tmp_path, common: list[str], extra: str) -> None:
    eager = make(common, tmp_path / "eager")
    eager.fit()
    other = make([*common, extra], tmp_path / "other")
    assert other.fit()["status"] == "completed"
    for (name, want), got in zip(eager.model.state_dict().items(), other.model.state_dict().values()):
        assert torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5), name


def test_compiled_model_trains_like_the_eager_one(tmp_path):
    """trainer.compile changes how the model runs, not what it learns (float32 reassociation only)."""
    same_weights_after_a_few_steps(tmp_path, ["data.batch_size=32", "optimizer=momentum", "scheduler=constant",
                                              "trainer.max_steps=3", "trainer.eval_every=3"], "trainer.compile=true")


def test_channels_last_trains_like_contiguous(tmp_path):
    """Convolutions in channels-last memory format: the weights are stored that way and training
    follows the contiguous run. (Weights are not compared: on 8x8 digits, ResNet-20's 2x2 last stage
    makes batch-norm gradients cancel, so other conv kernels' rounding shows in them at 1e-2.)"""
    common = ["model=resnet", "data.batch_size=128", "optimizer=momentum", "optimizer.lr=0.01", "scheduler=constant",
              "trainer.max_steps=6", "trainer.eval_every=6", "trainer.log_every=6"]
    contiguous = make(common, tmp_path / "contiguous").fit()
    trainer = make([*common, "trainer.channels_last=true"], tmp_path / "channels_last")
    assert trainer.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    summary = trainer.fit()
    assert summary["status"] == "completed"
    for key in ("train/loss", "val/loss"):
        assert summary["final"][key] == pytest.approx(contiguous["final"][key], rel=1e-2), key
