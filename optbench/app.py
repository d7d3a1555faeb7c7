"""`optbench run`: a Hydra app whose config is validated before Hydra makes any run folder."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from optbench import distributed, smoke
from optbench.errors import ConfigError

INTERRUPTED = 1  # exit status of a run stopped by a signal (its summary says `interrupted`)

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


def run(args: list[str]) -> int:
    """Run (or sweep) the configuration that `args` select; the process's exit status."""
    import hydra

    from optbench.config import PRIMARY_CONFIG, register_recipes, validate_overrides
    from optbench.paths import configs_dir

    register_recipes()
    try:
        overrides = split_overrides(args)
        args = [*(o for o in smoke.expand(overrides) if o not in overrides), *args]
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    if not any(a.split("=")[0] in INFO_FLAGS for a in args):
        multirun = "-m" in args or "--multirun" in args
        try:
            cfg = validate_overrides(split_overrides(args), multirun)
        except ConfigError as e:
            print(e.render(), file=sys.stderr)
            return 2
        args += distributed.shared_output_overrides(cfg)  # under torchrun: one folder for all ranks

    exit_codes: list[int] = []

    def task(cfg: DictConfig) -> None:
        exit_codes.append(run_job(cfg))
        if exit_codes[-1] == INTERRUPTED:
            raise SystemExit(INTERRUPTED)  # a stop signal ends the whole sweep, not just this job

    main = hydra.main(config_path=str(configs_dir()), config_name=PRIMARY_CONFIG, version_base="1.3")(task)
    sys.argv = ["optbench run", *args]
    main()
    return max(exit_codes, default=0)


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
    order = ("recipe", "model", "data", "optimizer", "params", "scheduler", "trainer")
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
