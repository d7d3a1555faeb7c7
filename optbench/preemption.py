"""Stopping at a step boundary when the cluster (or the user) asks.

SIGTERM (what SLURM and Kubernetes send before killing a job), SIGUSR1 (SLURM's
`--signal=USR1@<seconds>` warning) and a first Ctrl-C only set a flag; the trainer finishes
the optimizer step it is in, writes a checkpoint and ends with status `interrupted`, so that
the same command resumes. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("optbench")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Interrupted(Exception):
    """Raised by the trainer at a step boundary after a stop signal."""


class StopRequests:
    """Context manager: while inside, stop signals set `self.signal` instead of killing."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signal = signal.Signals(signum)
        log.warning("%s received: stopping after this step with a checkpoint", self.signal.name)

    def check(self) -> None:
        if self.signal is not None:
            raise Interrupted(f"stopped by {self.signal.name}")
