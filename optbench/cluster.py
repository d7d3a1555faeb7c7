"""Sweeps on a SLURM cluster: Hydra's submitit launcher (`hydra/launcher=slurm`), with requeue and resume.

submitit submits each run of a sweep as a job of a SLURM job array and asks SLURM for SIGUSR2 a
little before the time limit (`hydra.launcher.signal_delay_s`). In the job, optbench's trainer
takes the signal like SIGTERM: it finishes the step, writes a checkpoint, and hands the signal on
to submitit's handler (`preemption.StopRequests.pass_on`), which requeues the job. A job also runs
again when SLURM itself requeues it (a node failure, or preemption on a partition that requeues).
Either way the job runs the same call again, and `SlurmLauncher` makes that call continue from the
run folder's last checkpoint: `trainer.resume=auto` (a first run finds none and starts afresh).
"""

from __future__ import annotations

from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from optbench.distributed import QUIET_RANK

RESUME_KEY = "trainer.resume"


def with_resume(overrides: list[str]) -> list[str]:
    """`overrides` plus `trainer.resume=auto`, unless they set trainer.resume themselves."""
    if any(o.lstrip("+~").split("=", 1)[0] == RESUME_KEY for o in overrides):
        return list(overrides)
    return [*overrides, f"{RESUME_KEY}=auto"]


class SlurmLauncher(SubmititSlurmLauncher):
    """submitit's SLURM launcher whose jobs resume from their last checkpoint when they run again.

    A job of several tasks (`tasks_per_node` x `nodes`) is one data-parallel run: each task gets the
    variables torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's.
    """

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Any]) -> JobReturn:
        import submitit

        overrides = with_resume(sweep_overrides)
        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            # LOCAL_RANK picks the GPU (trainer.device), so every task keeps seeing all of the node's.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            overrides += [] if job.global_rank == 0 else QUIET_RANK
        return super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)
