"""Sweeps on a SLURM cluster: Hydra's submitit launcher (`hydra/launcher=slurm`), with requeue and resume.

submitit submits each run of a sweep as a job of a SLURM job array and asks SLURM for SIGUSR2 a
little before the time limit (`hydra.launcher.signal_delay_s`). In the job, optbench's trainer
takes the signal like SIGTERM: it finishes the step, writes a checkpoint, and hands the signal on
to submitit's handler (`preemption.StopRequests.pass_on`), which requeues the job. A job also runs
again when SLURM itself requeues it (a node failure, or preemption on a partition that requeues).
Either way the job runs the same call again, and `job_overrides` makes that call continue from the
run folder's last checkpoint: `trainer.resume=auto` (a first run finds none and starts afresh).

The launcher classes themselves are in `hydra_plugins/optbench_slurm_launcher` (Hydra instantiates
launchers only from the `hydra_plugins` package); `hydra/launcher=slurm_local` runs the same jobs
as processes on this machine (submitit's LocalExecutor).
"""

from __future__ import annotations

from optbench.commands.common import override_key
from optbench.distributed import QUIET_RANK

RESUME_KEY = "trainer.resume"


def with_resume(overrides: list[str]) -> list[str]:
    """`overrides` plus `trainer.resume=auto`, unless they set trainer.resume themselves."""
    if any(override_key(o) == RESUME_KEY for o in overrides):
        return list(overrides)
    return [*overrides, f"{RESUME_KEY}=auto"]


def job_overrides(sweep_overrides: list[str]) -> list[str]:
    """What a job of the sweep runs with, inside its submitit job: `sweep_overrides`, resuming.

    A job of several tasks (`tasks_per_node` x `nodes`) is one data-parallel run: each task gets the
    variables torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's.
    """
    import submitit  # only inside a job: Hydra's plugin scan imports the launcher module on every start

    overrides = with_resume(sweep_overrides)
    job = submitit.JobEnvironment()
    if job.num_tasks > 1:
        # LOCAL_RANK picks the GPU (trainer.device), so every task keeps seeing all of the node's.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        overrides += [] if job.global_rank == 0 else QUIET_RANK
    return overrides
