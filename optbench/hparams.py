"""TensorBoard's HParams view: each run's hyperparameters against its final and best metrics.

A finished run (completed or diverged) adds to its `tb/` folder the hparams plugin's three
records (the experiment's columns, this session's values, its end) and one scalar per metric
(`final/<name>`, `best/<name>`), so that `tensorboard --logdir <sweep folder>` shows every job
of a sweep as one row of the HParams table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optbench.commands.common import override_key, task_overrides
from optbench.run_folder import RunFolder

# Always shown: what an optimizer study compares first (when the config has them).
STANDARD = ("optimizer.lr", "optimizer.weight_decay", "data.batch_size")
LOGGED_STATUSES = ("completed", "diverged")  # a failed or interrupted run has no final metrics yet


def hparam_values(cfg: DictConfig, overrides: list[str], optimizer_name: str | None) -> dict[str, Any]:
    """Hyperparameters of a run: `optimizer` (the option's name), the standard keys, then the
    overrides given (in a sweep, those that vary), numbers as numbers."""
    values: dict[str, Any] = {}
    if optimizer_name is not None:
        values["optimizer"] = optimizer_name
    for key in STANDARD:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = value
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        values[key] = _number_or_text(value)
    return values


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def metric_values(summary: dict[str, Any]) -> dict[str, float]:
    """`final/<name>` and `best/<name>` of every number in the summary (NaN for a null)."""
    metrics = {}
    for kind in ("final", "best"):
        for name, value in summary.get(kind, {}).items():
            metrics[f"{kind}/{name}"] = math.nan if value is None else float(value)
    return metrics


def log_hparams(run_dir: Path, hparams: dict[str, Any], summary: dict[str, Any]) -> bool:
    """Write the HParams records of a finished run into `run_dir/tb`; whether anything was written."""
    if summary.get("status") not in LOGGED_STATUSES:
        return False
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    metrics = metric_values(summary)
    experiment, session_start, session_end = hparams_summaries(hparams, metrics)
    step = int(summary.get("steps", 0))
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for record in (experiment, session_start, session_end):
            writer.file_writer.add_summary(record)
        # The HParams table reads each metric column from the run's scalar of that name.
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
    return True


def log_job_hparams(cfg: DictConfig, constant: set[str]) -> None:
    """`log_hparams` for the Hydra job running now: its overrides of keys other than `constant`
    (the keys a sweep does not vary) are its hyperparameters. Rank 0 alone writes, under torchrun."""
    from optbench.distributed import world

    if not cfg.trainer.tensorboard or not world().is_main:
        return
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    run_dir = Path(str(hydra_cfg.runtime.output_dir))
    overrides = [o for o in task_overrides([str(o) for o in hydra_cfg.overrides.task])
                 if override_key(o) not in constant]
    values = hparam_values(cfg, overrides, hydra_cfg.runtime.choices.get("optimizer"))
    log_hparams(run_dir, values, RunFolder(run_dir).read_summary())
