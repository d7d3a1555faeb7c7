"""Stopping at a step boundary when the cluster (or the user) asks.

SIGTERM (what SLURM and Kubernetes send before killing a job), SIGUSR1 (SLURM's
`--signal=USR1@<seconds>` warning), SIGUSR2 (the warning submitit asks SLURM for) and a first
Ctrl-C only set a flag; the trainer finishes the optimizer step it is in, writes a checkpoint and
ends with status `interrupted`, and the log says the command that resumes it. A second Ctrl-C stops at once.

In a SLURM job started by submitit (`hydra/launcher=slurm`), submitit's own handler requeues the
job; `pass_on` hands it the signal once the checkpoint is written, and the requeued job resumes
from it.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

log = logging.getLogger("optbench")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


def resume_command(run_dir: Path) -> str | None:
    """The command that resumes the run in `run_dir`: `optbench run`, the flags that chose its
    configs, its own overrides, `hydra.run.dir=RUN_DIR trainer.resume=auto`. None outside a Hydra
    app (the Python API), where there is no command to repeat."""
    from hydra.core.hydra_config import HydraConfig

    from optbench.commands.common import ConfigSource, is_hydra_setting, override_key
    from optbench.paths import configs_dir

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    sources = {s.provider: s.path.removeprefix("file://") for s in hydra.runtime.config_sources}
    primary = sources.get("main")
    source = ConfigSource(config_path=None if primary == str(configs_dir()) else primary,
                          config_name=hydra.job.config_name, config_dir=sources.get("command-line"))
    # The sweep's or run's own Hydra settings (its folder, launcher) do not apply to one resumed run.
    overrides = [o for o in hydra.overrides.task if not is_hydra_setting(o) and override_key(o) != "trainer.resume"]
    words = ["optbench", "run", *source.flags(), *overrides, f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    return shlex.join(words)


class Interrupted(Exception):
    """Raised by the trainer at a step boundary after a stop signal."""


class StopRequests:
    """Context manager: while inside, stop signals set `self.signal` instead of killing."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, object] = {}
        self._replaced: dict[int, object] = {}  # the handlers ours stood in for, once restored

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._replaced, self._previous = self._previous, {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signal = signal.Signals(signum)
        log.warning("%s received: stopping after this step with a checkpoint", self.signal.name)

    def check(self, agree: Callable[[bool], bool] = bool) -> None:
        """Raise Interrupted after a stop signal. `agree` turns this process's answer into the one
        that all processes of the run share (any of them stopping stops all, at the same step)."""
        if agree(self.signal is not None):
            raise Interrupted(f"stopped by {self.signal.name if self.signal else 'another rank'}")

    def pass_on(self) -> None:
        """Deliver the stop signal to the Python handler that was installed before ours, if any.

        That is submitit's in a SLURM job (it requeues the job); outside one there is none, or
        Python's own Ctrl-C handler, which must not turn a clean stop into a KeyboardInterrupt.
        """
        previous = self._replaced.get(self.signal) if self.signal is not None else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.signal, None)


_orphaned = threading.Event()  # set once the launcher that started this worker process has died
_watching = threading.Event()


def stop_when_orphaned(poll_s: float = 0.2, grace_s: float = 30.0) -> None:
    """In a worker process of a launcher (joblib's loky workers): when the launcher dies, stop too.

    A launcher killed with SIGKILL cannot stop its workers, which would go on training with nobody
    to collect their results, while a re-run of the sweep resumes the same jobs. A watch thread
    sees the parent go (this process is re-parented) and sends this process SIGTERM: a running job
    checkpoints at the step boundary and ends `interrupted`, so the re-run continues it; a worker
    still alive `grace_s` later is ended. Started once per process.
    """
    if _watching.is_set():
        return
    _watching.set()
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        _orphaned.set()
        log.warning("the launcher (process %d) is gone: stopping this worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="optbench-orphan-watch", daemon=True).start()


def exit_if_orphaned() -> None:
    """End this worker now if its launcher is gone (its job is recorded; nobody waits for it)."""
    if _orphaned.is_set():
        os._exit(1)
