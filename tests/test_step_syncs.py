"""A training step reads nothing back from the device outside logging steps (issue 20, item 4): on
a GPU each such read stalls the host until the device has caught up, which costs more than any
line of Python. Counted here on the CPU, step by step, as the calls that would read (`item()`,
`float(t)`, `bool(t)`, `tolist()`, ...), through a torch function mode."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from torch.overrides import TorchFunctionMode

from optbench.config import job_config
from optbench.trainer import Trainer

READS = frozenset({"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__"})


class Reads(TorchFunctionMode):
    """Counts the tensor calls that copy a value to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += getattr(func, "__name__", "") in READS
        return func(*args, **(kwargs or {}))


def reads_per_step(trainer: Trainer) -> Counter[int]:
    """Device reads made by each optimizer step: its update and the trainer's work after it."""
    counts: Counter[int] = Counter()

    def counted(work: Callable[..., Any], step: Callable[[], int]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with Reads() as reads:
                result = work(*args, **kwargs)
            counts[step()] += reads.count
            return result
        return run

    trainer.train_step = counted(trainer.train_step, lambda: trainer.step + 1)  # before the counter moves
    trainer._after_step = counted(trainer._after_step, lambda: trainer.step)  # after it
    assert trainer.fit()["status"] == "completed"
    return counts


@pytest.mark.parametrize("settings", [
    [],
    ["trainer.clip_norm=1.0", "trainer.clip_value=0.5", "trainer.ema.decay=0.9", "trainer.accumulation_steps=2"],
])
def test_no_device_reads_outside_logging_steps(tmp_path, settings):
    cfg = job_config(["model=mlp", "trainer.max_steps=25", "trainer.log_every=10", "trainer.eval_every=25",
                      "trainer.progress=false", *settings])
    counts = reads_per_step(Trainer(cfg, tmp_path))
    logging_steps = {10, 20, 25}  # every log_every steps, and the last (its evaluation too)
    assert {step: n for step, n in counts.items() if step not in logging_steps} == dict.fromkeys(
        set(range(1, 26)) - logging_steps, 0)
    assert all(counts[step] > 0 for step in logging_steps)  # the counter sees the train line's reads


def test_a_diagnostic_step_reads_its_record_in_one_copy(tmp_path):
    cfg = job_config(["model=mlp", "trainer.max_steps=16", "trainer.log_every=10", "trainer.eval_every=16",
                      "trainer.diagnostics_every=5", "trainer.progress=false"])
    counts = reads_per_step(Trainer(cfg, tmp_path))
    # Steps 5 and 15: two group norms, six weight norms and six update ratios (the MLP's), one read.
    assert (counts[5], counts[15]) == (1, 1)
    assert (tmp_path / "diagnostics.jsonl").read_text().count("update_ratio") == 3  # steps 5, 10, 15
