"""`optbench run`: a Hydra app whose config is validated before Hydra makes any run folder."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from optbench import distributed, sweep
from optbench.commands.common import ConfigSource, Invocation, override_key, report, reports_bad_input
from optbench.config import expand_smoke, hydra_session, sweep_choices, validate_overrides
from optbench.errors import ConfigError
from optbench.folder_lock import FolderLock
from optbench.run_folder import HYDRA, RunFolder, write_text_atomic
from optbench.sweep import INTERRUPTED  # exit status of a run stopped by a signal

RUN_DIR_KEY = "hydra.run.dir"


@reports_bad_input
def run(args: list[str], rerun_hint: bool = True) -> int:
    """Run (or sweep) the configuration that `args` select; the process's exit status.

    `rerun_hint`: end a sweep by saying how to continue it (a caller with its own command says it).
    """
    import hydra

    invocation = _expanded(Invocation.parse(args))
    sweep_dir: Path | None = None
    run_dir: Path | None = None  # the single run's folder, once validated
    if invocation.shows_only and invocation.multirun:
        invocation = _one_run_to_show(invocation)
    if {"--shell-completion", "-sc"} & set(invocation.flags):  # Hydra's would complete a command named `run`
        raise ConfigError("--shell-completion: optbench completes as one command; "
                          "use `source <(optbench completion bash)` (or zsh, fish).")
    if {"--help", "-h"} & set(invocation.flags):  # Hydra's app help, without its slow group listing
        from optbench.commands.listing import run_help

        return run_help(invocation)
    if not invocation.shows_only:
        first = validate_overrides(list(invocation.overrides), invocation.multirun, invocation.source)
        devices = distributed.devices_to_start(first)
        if devices > 1 and invocation.multirun:
            raise ConfigError(
                f"trainer.devices={devices} with -m: a sweep's jobs run one data-parallel run at a time "
                f"through a launcher (hydra/launcher=slurm with tasks_per_node); run the sweep with "
                f"trainer.devices=1, or one configuration per command.")
        if devices > 1:  # checked here, once: the ranks then start with a valid configuration
            return distributed.launch(devices, invocation.argv())
        if invocation.multirun and distributed.world().size > 1:
            raise ConfigError(
                "-m under torchrun: a sweep's jobs are launched one data-parallel run at a time by "
                "a launcher (hydra/launcher=slurm with tasks_per_node); run `optbench run -m` "
                "without torchrun, or torchrun one configuration per command.")
        # Under torchrun every rank takes rank 0's run folder.
        overrides = [*invocation.overrides, *distributed.shared_output_overrides(first)]
        if invocation.multirun:  # the sweep folder and its index, fixed before Hydra launches a job
            overrides, sweep_dir = sweep.prepare(overrides, first)
        else:
            overrides, run_dir = _pinned_run_dir(overrides, first)
        invocation = invocation.with_overrides(overrides)

    exit_codes: list[int] = []
    launcher_pid = os.getpid()
    source = invocation.source  # the one that validation composed from

    def task(cfg: DictConfig) -> float | None:
        if sweep_dir is not None:  # jobs record themselves in sweep.json, in whichever process runs them
            return sweep.run_in_sweep(cfg, run_job, in_launcher_process=os.getpid() == launcher_pid)
        exit_codes.append(run_job(cfg))
        if exit_codes[-1] == INTERRUPTED:
            raise SystemExit(INTERRUPTED)
        return None

    main = hydra.main(config_path=source.primary_path, config_name=source.config_name, version_base="1.3")(task)
    sys.argv = ["optbench run", *invocation.argv()]
    with _hydra_files_written_atomically():
        if run_dir is not None and _runs_as_composed(invocation, first):
            return _run_alone(lambda: _run_composed(first, run_dir, task, source), run_dir, exit_codes)
        if sweep_dir is None:
            return _run_alone(main, run_dir, exit_codes)
        try:
            main()
            stopped = 0
        except SystemExit as e:  # a job stopped by a signal, or Hydra's own error exit
            stopped = e.code if isinstance(e.code, int) else 1
    return max(sweep.finish(sweep_dir, rerun_hint), stopped)


@reports_bad_input
def check(args: list[str]) -> int:
    """`optbench check`: validate what `optbench run ARGS` would run, without running it."""
    invocation = _expanded(Invocation.parse(args))
    cfg = validate_overrides(list(invocation.overrides), invocation.multirun, invocation.source)
    chosen = cfg.hydra.runtime.choices
    order = ("recipe", "model", "data", "optimizer", "params", "scheduler", "trainer", "batching")
    choices = " ".join(f"{k}={chosen[k]}" for k in order if chosen.get(k) is not None)
    print(f"optbench check: the configuration is valid ({choices}).")
    return 0


def _pinned_run_dir(overrides: list[str], cfg: DictConfig) -> tuple[list[str], Path]:
    """`overrides` with hydra.run.dir fixed to one folder, and that folder: the folder that the
    pre-flight checked and locks is the one Hydra writes (the default's `${now:...}` changes with
    every read). Under torchrun, rank 0's folder, which `shared_output_overrides` put last."""
    if distributed.world().size > 1:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        shared = [o for o in overrides if override_key(o) == RUN_DIR_KEY][-1]
        return overrides, Path(str(OverridesParser.create().parse_override(shared).value()))
    run_dir = Path(str(cfg.hydra.run.dir))
    kept = [o for o in overrides if override_key(o) != RUN_DIR_KEY]
    return [*kept, run_dir_override(run_dir)], run_dir


def run_dir_override(run_dir: Path) -> str:
    """`hydra.run.dir='FOLDER'`: the override that pins a run's folder (quoted: any path is safe)."""
    return f"{RUN_DIR_KEY}={distributed.quoted(str(run_dir))}"


def _runs_as_composed(invocation: Invocation, cfg: DictConfig) -> bool:
    """Whether Hydra's main would run exactly the config that the pre-flight composed: one run in
    one process, with no flag of Hydra's but --run and no run mode chosen by hand (hydra.mode)."""
    return (set(invocation.flags) <= {"--run", "-r"} and distributed.world().size == 1
            and cfg.hydra.mode is None)


def _run_composed(cfg: DictConfig, run_dir: Path, task: Callable[[DictConfig], object], source: ConfigSource) -> None:
    """Hydra's main for one run (`Hydra.run`), on the config that the pre-flight composed and
    validated. Hydra's main would compose it twice more (its run mode, then the run): about a
    tenth of a second each, for the same config."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode

    with read_write(cfg), open_dict(cfg):  # what Hydra's main adds: the folder pinned, the run mode
        cfg.hydra.run.dir = str(run_dir)
        cfg.hydra.mode = RunMode.RUN
        hydra_overrides = [o for o in cfg.hydra.overrides.hydra if override_key(o) != RUN_DIR_KEY]
        cfg.hydra.overrides.hydra = [*hydra_overrides, run_dir_override(run_dir), "hydra.mode=RUN"]
    with hydra_session(source):
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name=source.config_name)
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=callbacks)
        done = run_job(task_function=task, config=cfg, job_dir_key=RUN_DIR_KEY, job_subdir_key=None,
                       hydra_context=context)
        callbacks.on_run_end(config=cfg, config_name=source.config_name, job_return=done)
        _ = done.return_value  # raises what the task raised, as Hydra's run does


def _run_alone(main: Callable[[], None], run_dir: Path | None, exit_codes: list[int]) -> int:
    """Run Hydra's `main` for one run, holding its folder's lock from before Hydra writes there
    (`.hydra/`, the log) to the end; a finished run is left as it is. `run_dir`: None when Hydra
    only shows something (--cfg, --help)."""
    if run_dir is None:
        main()
        return max(exit_codes, default=0)
    folder = RunFolder(run_dir)
    status = folder.finished()
    if status is not None:  # the pre-flight refused anything that would change it
        print(f"optbench: {run_dir}: that run is finished ({status}, {folder.read_summary().get('steps')} steps); "
              f"nothing was run or written: a finished run's folder is never written again.", file=sys.stderr)
        return 0
    try:
        lock = FolderLock.take(run_dir) if distributed.world().is_main else None  # rank 0 writes the folder
    except OSError as e:  # a full disk is found here, before Hydra writes anything
        print(f"optbench: error: {e}; nothing was run.", file=sys.stderr)
        return 1
    try:
        main()
    finally:
        if lock is not None:
            lock.release()
    return max(exit_codes, default=0)


@contextmanager
def _hydra_files_written_atomically() -> Iterator[None]:
    """While Hydra runs jobs in this process, its `.hydra/` files are written atomically (a resumed
    run's old ones stay whole on a full disk), and a write that fails ends the command with one
    line naming the file, exit status 1. Hydra writes them with open().write() and reports any
    exception as a traceback (`run_and_report`); a SystemExit passes through that."""
    import hydra.core.utils

    hydra_save = hydra.core.utils._save_config

    def save(cfg: Any, filename: str, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            write_text_atomic(output_dir / filename, OmegaConf.to_yaml(cfg))
        except OSError as e:  # a full disk: the job has not started
            print(f"optbench: error: {e}; the run did not start (Hydra's {HYDRA}/ files could not be "
                  f"written). Free space, then run the same command again.", file=sys.stderr)
            raise SystemExit(1) from None

    hydra.core.utils._save_config = save
    try:
        yield
    finally:
        hydra.core.utils._save_config = hydra_save


def _expanded(invocation: Invocation) -> Invocation:
    """`invocation` with `smoke=true`'s overrides in front of the user's (theirs win)."""
    return invocation.with_overrides(expand_smoke(list(invocation.overrides), invocation.source))


def _one_run_to_show(invocation: Invocation) -> Invocation:
    """`invocation` without -m, for a flag that shows something (--cfg, --info, ...).

    Hydra shows one run and refuses those flags with --multirun; a command whose overrides name one
    run shows that run, one whose overrides sweep is refused (which run would it show?).
    """
    overrides = list(invocation.overrides)
    sweeping = {o: choices for o, choices in zip(overrides, sweep_choices(overrides)) if len(choices) > 1}
    if sweeping:
        shown = " ".join(invocation.flags)
        raise ConfigError(
            f"{shown} with -m: {' '.join(sweeping)} sweep over several runs, and {shown} shows one run; "
            f"give each key one value ({' '.join(c[0] for c in sweeping.values())}), or validate every run "
            f"of the sweep with `optbench check -m ...`.")
    return replace(invocation, multirun=False)


def run_job(cfg: DictConfig) -> int:
    """Train one configuration in Hydra's run folder; never raises, so a sweep goes on.

    Returns 0 for a finished run (completed or diverged: the summary says which), 2 for bad
    input found at run time, 1 for a run interrupted by a signal (checkpointed: the same command
    resumes) or any other failure (recorded in summary.json).
    """
    from hydra.core.hydra_config import HydraConfig

    import torch

    from optbench.gan_trainer import trainer_class

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # A log file on a full disk: not a traceback per log line; the write that finds it says so once.
    logging.raiseExceptions = False
    try:
        summary = trainer_class(cfg)(cfg, run_dir).fit()
        return INTERRUPTED if summary["status"] == "interrupted" else 0
    except ConfigError as e:
        return report(e)
    except OSError as e:  # the run folder's disk is full, or gone: one line, no traceback
        summary = "summary.json: failed" if _record_failure(run_dir, f"{type(e).__name__}: {e}") else \
            "summary.json left as it was"
        print(f"optbench: error: {e}; the run stopped ({summary}, checkpoints intact). Free space, then "
              f"continue it: the same command with trainer.resume=auto.", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError as e:
        print(f"optbench: error: out of memory ({' '.join(str(e).split())[:160]}): lower data.batch_size "
              f"(with trainer.accumulation_steps to keep the effective batch), or use trainer.precision=bf16.",
              file=sys.stderr)
        _record_failure(run_dir, "out of memory")
        return 2
    except Exception as e:  # any other failure: record it, say where, let the sweep continue
        traceback.print_exc()
        _record_failure(run_dir, f"{type(e).__name__}: {e}")
        return 1


def _record_failure(run_dir: Path, error: str) -> bool:
    """summary.json `failed` with `error`; whether it could be written. Where it cannot (a full
    disk), the summary stays as it was: it is replaced atomically or not at all."""
    try:
        RunFolder(run_dir).write_summary({"status": "failed", "error": error})
    except OSError:
        return False
    return True
