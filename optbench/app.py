"""`optbench run`: a Hydra app whose config is validated before Hydra makes any run folder."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from optbench import distributed, smoke
from optbench.errors import ConfigError

from optbench.sweep import INTERRUPTED  # exit status of a run stopped by a signal

# Hydra flags that print something instead of running: no validation before them.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve",
              "--package", "-p", "--shell-completion", "-sc", "--version"}
# Hydra flags followed by a value that is not an override.
VALUE_FLAGS = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd",
               "--experimental-rerun"}


def split_overrides(args: list[str]) -> list[str]:
    """The overrides among Hydra's command-line arguments (flags and their values removed)."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def run(args: list[str], rerun_hint: bool = True) -> int:
    """Run (or sweep) the configuration that `args` select; the process's exit status.

    `rerun_hint`: end a sweep by saying how to continue it (a caller with its own command says it).
    """
    import hydra

    from optbench import sweep
    from optbench.config import PRIMARY_CONFIG, register_recipes, validate_overrides
    from optbench.hparams import log_job_hparams
    from optbench.paths import configs_dir

    register_recipes()
    try:
        overrides = split_overrides(args)
        extra = [o for o in smoke.expand(overrides) if o not in overrides]
        # Before the user's first override (theirs win), after flags such as -m: Hydra's parser
        # takes the overrides as one run of arguments.
        at = next((i for i, a in enumerate(args) if a in overrides), len(args))
        args = [*args[:at], *extra, *args[at:]]
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    multirun = "-m" in args or "--multirun" in args
    sweep_dir: Path | None = None
    if not any(a.split("=")[0] in INFO_FLAGS for a in args):
        try:
            first = validate_overrides(split_overrides(args), multirun)
            devices = distributed.devices_to_start(first)
            if devices > 1 and multirun:
                raise ConfigError(
                    f"trainer.devices={devices} with -m: a sweep's jobs run one data-parallel run at a time "
                    f"through a launcher (hydra/launcher=slurm with tasks_per_node); run the sweep with "
                    f"trainer.devices=1, or one configuration per command.")
            if devices > 1:  # checked here, once: the ranks then start with a valid configuration
                return distributed.launch(devices, args)
            if multirun and distributed.world().size > 1:
                raise ConfigError(
                    "-m under torchrun: a sweep's jobs are launched one data-parallel run at a time by "
                    "a launcher (hydra/launcher=slurm with tasks_per_node); run `optbench run -m` "
                    "without torchrun, or torchrun one configuration per command.")
            # Under torchrun every rank takes rank 0's run folder.
            args += distributed.shared_output_overrides(first)
            if multirun:  # the sweep folder and its index, fixed before Hydra launches a job
                args, sweep_dir = sweep.prepare(args, split_overrides(args), first)
        except ConfigError as e:
            print(e.render(), file=sys.stderr)
            return 2

    exit_codes: list[int] = []
    launcher_pid = os.getpid()

    def task(cfg: DictConfig) -> float | None:
        if sweep_dir is not None:  # jobs record themselves in sweep.json, in whichever process runs them
            return sweep.run_in_sweep(cfg, run_job, in_launcher_process=os.getpid() == launcher_pid)
        exit_codes.append(run_job(cfg))
        log_job_hparams(cfg, constant=set())
        if exit_codes[-1] == INTERRUPTED:
            raise SystemExit(INTERRUPTED)
        return None

    main = hydra.main(config_path=str(configs_dir()), config_name=PRIMARY_CONFIG, version_base="1.3")(task)
    sys.argv = ["optbench run", *args]
    if sweep_dir is None:
        main()
        return max(exit_codes, default=0)
    try:
        main()
        stopped = 0
    except SystemExit as e:  # a job stopped by a signal, or Hydra's own error exit
        stopped = e.code if isinstance(e.code, int) else 1
    return max(sweep.finish(sweep_dir, rerun_hint), stopped)


def check(args: list[str]) -> int:
    """`optbench check`: validate what `optbench run ARGS` would run, without running it."""
    from optbench.config import register_recipes, validate_overrides

    register_recipes()
    multirun = "-m" in args or "--multirun" in args
    try:
        cfg = validate_overrides(smoke.expand(split_overrides(args)), multirun)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    chosen = cfg.hydra.runtime.choices
    order = ("recipe", "model", "data", "optimizer", "params", "scheduler", "trainer", "batching")
    choices = " ".join(f"{k}={chosen[k]}" for k in order if chosen.get(k) is not None)
    print(f"optbench check: the configuration is valid ({choices}).")
    return 0


def run_job(cfg: DictConfig) -> int:
    """Train one configuration in Hydra's run folder; never raises, so a sweep goes on.

    Returns 0 for a finished run (completed or diverged: the summary says which), 2 for bad
    input found at run time, 1 for a run interrupted by a signal (checkpointed: the same command
    resumes) or any other failure (recorded in summary.json).
    """
    from hydra.core.hydra_config import HydraConfig

    import torch

    from optbench.gan import trainer_class
    from optbench.runlog import write_summary

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = trainer_class(cfg)(cfg, run_dir).fit()
        return INTERRUPTED if summary["status"] == "interrupted" else 0
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as e:
        print(f"optbench: error: out of memory ({' '.join(str(e).split())[:160]}): lower data.batch_size "
              f"(with trainer.accumulation_steps to keep the effective batch), or use trainer.precision=bf16.",
              file=sys.stderr)
        write_summary(run_dir, {"status": "failed", "error": "out of memory"})
        return 2
    except Exception as e:  # any other failure: record it, say where, let the sweep continue
        traceback.print_exc()
        write_summary(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        return 1
