"""Stopping at a step boundary when the cluster (or the user) asks.

SIGTERM (what SLURM and Kubernetes send before killing a job), SIGUSR1 (SLURM's
`--signal=USR1@<seconds>` warning), SIGUSR2 (the warning submitit asks SLURM for) and a first
Ctrl-C only set a flag; the trainer finishes the optimizer step it is in, writes a checkpoint and
ends with status `interrupted`, so that the same command resumes. A second Ctrl-C stops at once.

In a SLURM job started by submitit (`hydra/launcher=slurm`), submitit's own handler requeues the
job; `pass_on` hands it the signal once the checkpoint is written, and the requeued job resumes
from it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("optbench")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


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
