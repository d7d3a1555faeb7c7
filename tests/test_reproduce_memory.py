"""What claims 5, 6, 7 and 9 of `optbench reproduce` compute (optbench/commands/reproduce/memory.py):
the state counts, and each rule on constructed numbers, a case that holds and one that does not."""

from __future__ import annotations

import pytest

from optbench.commands.reproduce import memory
from optbench.errors import ConfigError


def test_state_elements_counts_adafactors_factored_moment_and_adams_two():
    shapes = [(6, 10), (7,)]
    assert memory.state_elements("adafactor", shapes) == [{"elements": 16, "scalars": 1}, {"elements": 7, "scalars": 1}]
    assert memory.state_elements("adam", shapes) == [{"elements": 120, "scalars": 1}, {"elements": 14, "scalars": 1}]


def test_factored_rule_wants_n_plus_m_for_a_matrix_and_n_for_a_vector():
    assert memory.factored([1000, 300], adafactor=1300, adam=600_000)
    assert memory.factored([4096], adafactor=4096, adam=8192)
    assert not memory.factored([1000, 300], adafactor=2000, adam=600_000)  # n + n: not n + m
    assert not memory.factored([1000, 300], adafactor=300_000, adam=600_000)  # a full second moment
    assert not memory.factored([4096], adafactor=4096, adam=4096)


def test_lion_rule_is_one_half_less_step_counters_and_whole_training_memory_is_three_quarters():
    assert memory.half_state(256 / (512 + 4))  # 64-element tensors: AdamW's step counter shows
    assert memory.half_state(0.5)
    assert not memory.half_state(0.51)
    assert not memory.half_state(0.25)
    assert memory.training_memory_ratio(4.0, 8.0) == pytest.approx(0.75)  # (4+4+4) / (4+4+8)


def test_8bit_rules_on_memory_saving_and_on_seeded_accuracies():
    assert memory.saving_holds(1 - 2.031 / 8.0)  # 2 bytes plus an fp32 absmax per 256 elements
    assert not memory.saving_holds(0.716)  # the digits MLP, whose small tensors stay in fp32
    held, p, said = memory.same_performance([0.970, 0.975, 0.972], [0.971, 0.974, 0.974])
    assert held and said == "not distinguishable" and float(p) > 0.05
    held, p, said = memory.same_performance([0.970, 0.975, 0.972], [0.950, 0.956, 0.951])
    assert not held and said == "Adam better" and float(p) < 0.05
    held, _, said = memory.same_performance([0.970, 0.975, 0.972], [0.960, 0.978, 0.962])  # 0.6 points lower
    assert not held and said == "not distinguishable"


def test_order_conflicts_names_the_pairs_a_categorical_column_gets_wrong():
    order = ("Low", "Medium", "High")
    rated = {"SGD+Momentum": ("Low", 1.0), "Lion": ("Medium", 1.0), "Adam": ("High", 2.0), "8-bit": ("Low", 0.5)}
    assert memory.order_conflicts(rated, order) == [("SGD+Momentum", "Lion")]
    assert memory.order_conflicts({**rated, "Lion": ("Medium", 1.5)}, order) == []
    speed = {"Lion": ("Fast", 1.0), "Adam": ("Medium", 1.05), "Adafactor": ("Slow", 20.0)}
    assert memory.order_conflicts(speed, ("Fast", "Medium", "Slow"), 1.1) == [("Lion", "Adam")]
    assert memory.order_conflicts({**speed, "Adam": ("Medium", 1.2)}, ("Fast", "Medium", "Slow"), 1.1) == []


def test_bench_rows_keeps_each_configs_own_row(tmp_path):
    header = ("optimizer,implementation,step_ms_min,step_ms,vs_fused_adamw_min,vs_fused_adamw,"
              "vs_fused_sgd_momentum_min,vs_fused_sgd_momentum,state_bytes_per_param")
    lines = ["adamw (baseline),torch fused,2,2,1,1,1,1,8.0", "lion,optbench,2,2,1,1,1,1,4.0",
             "lion,timm,9,9,4,4,4,4,4.0", "adam8bit,bitsandbytes,80,80,40,40,40,40,2.05"]
    (tmp_path / "bench.csv").write_text("\n".join([header, *lines]) + "\n")
    rows = memory.bench_rows(tmp_path)
    assert list(rows) == ["lion", "adam8bit"]
    assert rows["lion"]["implementation"] == "optbench" and rows["lion"]["step_ms_min"] == 2.0
    assert rows["adam8bit"]["state_bytes_per_param"] == 2.05


def test_bench_out_writes_its_csv_into_the_folder_and_one_place_only(tmp_path):
    from optbench.commands.bench import parse

    assert parse(["--out", str(tmp_path / "b")])[2] == tmp_path / "b" / "bench.csv"
    with pytest.raises(ConfigError):
        parse(["--csv", str(tmp_path / "x.csv"), "--out", str(tmp_path / "b")])


def test_without_bitsandbytes_the_8bit_claims_fail_before_bench_leaves_a_folder(tmp_path, monkeypatch):
    from optbench.commands.reproduce.claim import ClaimFailed, Context

    real = memory.importlib.util.find_spec
    monkeypatch.setattr(memory.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ClaimFailed, match="optbench\\[bnb\\]"):
        memory.bench(Context("smoke", tmp_path), "bench", ["adam", "adam8bit"], ["shape=tiny"])
    assert not (tmp_path / "bench").exists()


class FakeRun:
    """What claim 7's full-scale check reads of a finished run."""

    def __init__(self, optimizer: str, seed: int, state_bytes: int, best_acc: float):
        self.overrides = {"optimizer": optimizer, "trainer.seed": seed}
        self.summary = {"optimizer_state_bytes": state_bytes, "best": {"val/acc": best_acc}}

    def value(self, key: str):
        return self.overrides[key]


def test_8bit_adam_at_full_scale_trains_bert_finetune_on_the_gpu_and_judges_the_real_models_state(
        tmp_path, monkeypatch):
    from optbench.commands.reproduce import claim
    from optbench.commands.reproduce.claim import Context

    ctx = Context("full", tmp_path, data_root=str(tmp_path / "data"))  # CIFAR's place: the bundled text ignores it
    monkeypatch.setattr(claim, "has_gpu", lambda: False)
    outcome = memory.adam8bit(ctx)
    assert outcome.verdict == "out of reach" and "no CUDA GPU" in outcome.seen and "bert_finetune" in outcome.full_scale

    swept = []

    def sweep(name, jobs, common=()):
        swept.append((name, jobs, list(common)))
        return ([FakeRun("adamw", s, 8_000_000, acc) for s, acc in enumerate((0.90, 0.91, 0.92))]
                + [FakeRun("adamw8bit", s, 2_030_000, acc) for s, acc in enumerate((0.905, 0.905, 0.921))])

    monkeypatch.setattr(claim, "has_gpu", lambda: True)
    monkeypatch.setattr(ctx, "sweep", sweep)
    outcome = memory.adam8bit(ctx)
    assert swept == [("bert_runs", [[f"optimizer={o}", f"trainer.seed={s}"] for o in ("adamw", "adamw8bit")
                                    for s in (0, 1, 2)], ["recipe=bert_finetune"])]
    assert outcome.verdict == "reproduced", outcome  # 74.6% less state, accuracies not distinguishable
    assert outcome.figures["state_saving"] == pytest.approx(1 - 2.03 / 8)
    monkeypatch.setattr(ctx, "sweep", lambda *a, **k: [FakeRun("adamw", s, 8_000_000, 0.9) for s in range(3)]
                        + [FakeRun("adamw8bit", s, 6_000_000, 0.9) for s in range(3)])
    assert memory.adam8bit(ctx).verdict == "not reproduced"  # 25% less: small tensors kept in fp32
