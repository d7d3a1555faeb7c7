"""`optbench run`: a Hydra app whose config is validated before Hydra makes any run folder."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from optbench import smoke
from optbench.errors import ConfigError

log = logging.getLogger("optbench")

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
            validate_overrides(split_overrides(args), multirun)
        except ConfigError as e:
            print(e.render(), file=sys.stderr)
            return 2

    exit_codes: list[int] = []

    def task(cfg: DictConfig) -> None:
        exit_codes.append(run_job(cfg))

    main = hydra.main(config_path=str(configs_dir()), config_name=PRIMARY_CONFIG, version_base="1.3")(task)
    sys.argv = ["optbench run", *args]
    main()
    return max(exit_codes, default=0)


def run_job(cfg: DictConfig) -> int:
    """Train one configuration in Hydra's run folder; never raises, so a sweep goes on.

    Returns 0 for a finished run (completed, diverged or interrupted: the summary says which),
    2 for bad input found at run time, 1 for any other failure (recorded in summary.json).
    """
    from hydra.core.hydra_config import HydraConfig

    from optbench.gan import trainer_class
    from optbench.runlog import write_summary

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = trainer_class(cfg)(cfg, run_dir).fit()
        return 130 if summary["status"] == "interrupted" else 0
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 2
    except Exception as e:  # any other failure: record it, say where, let the sweep continue
        traceback.print_exc()
        write_summary(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        return 1
