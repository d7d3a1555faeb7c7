"""MLflow as a second home for a run's records (`trainer.mlflow=true`).

`MetricsLog` hands the same scalars to MLflow that it writes to TensorBoard, at the same steps;
this module opens the MLflow run (the resolved config as params, the run folder as a tag),
and ends it with the run's status. The store is `trainer.mlflow_tracking_uri`, by default a local
file store in the run folder's `mlruns/` (read it with `mlflow ui --backend-store-uri <run>/mlruns`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from optbench.profiles import flat

EXPERIMENT = "optbench"
INSTALL = "pip install 'optbench[mlflow]' (or: pip install mlflow-skinny)"
RUN_DIR_TAG = "optbench.run_dir"
STATUS_TAG = "optbench.status"
# optbench's statuses -> MLflow's run states.
MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}
PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch


def problems(trainer: DictConfig) -> list[str]:
    """`trainer.mlflow=true` without the mlflow package: refused before the run, with how to install it."""
    if trainer.get("mlflow") and importlib.util.find_spec("mlflow") is None:
        return [f"trainer.mlflow=true: the mlflow package is not installed; {INSTALL}, or set trainer.mlflow=false."]
    return []


class MlflowRun:
    """One MLflow run for one run folder; a resumed run continues the MLflow run it started."""

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any], tracking_uri: str | None,
                 resumed: bool):
        from mlflow.tracking import MlflowClient

        run_dir = run_dir.resolve()
        uri = tracking_uri or (run_dir / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: a store of plain files in the run folder
            # is what an offline run wants (no database, nothing to serve).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        earlier = self._earlier_run(experiment_id, run_dir) if resumed else None
        if earlier is not None:  # params were logged at the first start (MLflow never changes one)
            self.run_id = earlier
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=name, tags={RUN_DIR_TAG: str(run_dir)})
            self.run_id = run.info.run_id
            self._log_params(config)
        self.client.set_tag(self.run_id, STATUS_TAG, "running")

    def _earlier_run(self, experiment_id: str, run_dir: Path) -> str | None:
        if "'" in str(run_dir):  # not expressible in MLflow's filter syntax: a new MLflow run
            return None
        found = self.client.search_runs([experiment_id], f"tags.`{RUN_DIR_TAG}` = '{run_dir}'", max_results=1)
        return found[0].info.run_id if found else None

    def _log_params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)) for key, value in flat(config).items()]
        for start in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_CALL])

    def log_metrics(self, scalars: dict[str, float], step: int) -> None:
        """The scalars that TensorBoard gets at `step`, under the same names (NaN and inf kept)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, float(value), now, step) for tag, value in scalars.items() if value is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, status: str, metrics: dict[str, float], step: int) -> None:
        """The run's status (optbench's as a tag, MLflow's own state) and its `final/` and `best/`
        metrics at its last step."""
        self.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step)
        self.client.set_tag(self.run_id, STATUS_TAG, status)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(status, "FAILED"))
