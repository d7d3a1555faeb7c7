"""`hydra/launcher=slurm` (and `slurm_local`): submitit's launchers whose jobs resume when they run again.

Hydra instantiates a launcher only from a class defined in the `hydra_plugins` package (its plugin
scan registers it there), so the classes live here; what a job does differently is
`optbench.cluster.job_overrides`.
"""

from __future__ import annotations

from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

from optbench.cluster import job_overrides


class ResumingLauncher(BaseSubmititLauncher):
    """submitit's launcher whose jobs continue from their last checkpoint when they run again."""

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Any]) -> JobReturn:
        # Runs in the job, on every (re)start: submitit calls the pickled launcher there.
        return super().__call__(job_overrides(sweep_overrides), job_dir_key, job_num, job_id, singleton_state)


class SlurmLauncher(ResumingLauncher):
    """Each job of a sweep is a task of a SLURM job array (`hydra/launcher=slurm`)."""

    _EXECUTOR = "slurm"


class LocalLauncher(ResumingLauncher):
    """Each job is a process on this machine under submitit's LocalExecutor (`hydra/launcher=slurm_local`):
    the SLURM launcher's requeue and resume, tried without a cluster."""

    _EXECUTOR = "local"
