"""`hydra/sweeper=list`: a sweep over an explicit list of jobs instead of a Cartesian product.

`optbench compare` runs its trials through it: each trial has its own values (points of a
quasi-random search), which no product of `key=a,b,c` can express. The jobs are read from a
JSON file (`hydra.sweeper.jobs_file`: a list of override lists); each job runs with the command
line's overrides followed by its own, through the configured launcher (basic or joblib), so
job folders, numbering and `sweep.json` are those of any other optbench sweep.

A recipe's own sweep (`hydra.sweeper.params`) is replaced by the list, as a key given on the
command line replaces a recipe's sweep of that key: the list names every job.
"""

# No `from __future__ import annotations`: Hydra's plugin scan loads this module without
# registering it in sys.modules, where dataclasses look up string annotations.
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class ListSweeperConf:
    _target_: str = "hydra_plugins.optbench_list_sweeper.list_sweeper.ListSweeper"
    jobs_file: str = "???"
    params: Optional[Dict[str, str]] = None  # a recipe's sweep, replaced by the list (see above)


ConfigStore.instance().store(group="hydra/sweeper", name="list", node=ListSweeperConf, provider="optbench")


class ListSweeper(Sweeper):
    def __init__(self, jobs_file: str, params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.jobs_file = Path(jobs_file)
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context  # validate_batch_is_legal composes each job with it
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        jobs = json.loads(self.jobs_file.read_text())
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        batch = [[*arguments, *job] for job in jobs]
        self.validate_batch_is_legal(batch)
        return [self.launcher.launch(batch, initial_job_idx=0)]
