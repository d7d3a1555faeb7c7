"""The terminal view of a run: a rich progress bar while training and a summary table after.

On a terminal, the bar keeps step/total, elapsed time and ETA at any width from 80 columns (the
status text gives way first), and log lines print above it. When stdout is not a terminal (a
SLURM log, `| tee`), a plain line is printed at log steps instead, as timm does, so that a log
file shows progress while the run goes on. Either is drawn at most 10 times a second (as tqdm
does) and at the end. In a sweep's job the bar or line names the job.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column, Table
from rich.text import Text

console = Console(stderr=True)

LABEL_WIDTH = 24  # a sweep job's label at most: the bar's step/total, elapsed and ETA fit 80 columns

# The bar is redrawn, or a plain line printed, at most this often (tqdm's `mininterval`), and at
# the last step: a small model logs every 10 steps many times a second, faster than anyone reads,
# and each redraw cost ~60 us of the training thread.
REDRAW_INTERVAL_S = 0.1


class StatusColumn(ProgressColumn):
    """Loss, LR, samples/s and epoch: the column that gives way when the terminal is narrow.

    Its table column wraps (so rich narrows it before the others) and its text is cut with an
    ellipsis instead of wrapping onto a second line."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=False, overflow="ellipsis"))

    def render(self, task: Task) -> Text:
        return Text(task.fields["status"], no_wrap=True, overflow="ellipsis")


def make_progress(label: str, target: Console) -> Progress:
    """The bar's columns, most important first to keep: step/total, elapsed, ETA, then the status."""
    return Progress(
        TextColumn(f"[bold]{label}", markup=True),
        BarColumn(bar_width=None, table_column=Column(max_width=20, no_wrap=False)),  # narrows too
        # Never narrowed: rich narrows the columns that may wrap, these would lose digits.
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        StatusColumn(),
        console=target,
        # Redrawn at log steps only: a refresh thread would take the GIL and a core from
        # training 10 times a second.
        auto_refresh=False,
    )


def job_label() -> str:
    """`train`, or in a sweep's job its number and overrides (`#3 optimizer=lion,optimizer.lr=0.001`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return "train"
    job = HydraConfig.get().job
    return f"#{job.num} {job.override_dirname}".strip()


def shortened(label: str) -> str:
    """`label` cut to LABEL_WIDTH characters, for the bar."""
    return label if len(label) <= LABEL_WIDTH else label[:LABEL_WIDTH - 1] + "…"


def status_text(epoch: float, metrics: dict[str, float]) -> str:
    """The run's numbers at a log step, most telling first (the bar cuts from the end)."""
    status = f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.3g}"
    if "samples_per_s" in metrics:
        status += f"  {metrics['samples_per_s']:,.0f} samples/s"
    return status + f"  epoch {epoch:.2f}"


def clock(seconds: float) -> str:
    """`H:MM:SS`, as rich's elapsed and remaining columns show time."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class _ConsoleStream:
    """A stream for logging handlers that prints through the console: above a live bar, not into it."""

    def __init__(self, target: Console):
        self._console = target

    def write(self, text: str) -> int:
        self._console.out(text, end="", highlight=False)
        return len(text)

    def flush(self) -> None:
        pass


def terminal_log_handlers() -> list[logging.StreamHandler]:
    """The logging handlers (Hydra's console handler among them) that write to the terminal."""
    terminal = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    return [h for logger in loggers if isinstance(logger, logging.Logger) for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and id(h.stream) in terminal]


class ProgressBar:
    """Step/total, elapsed, ETA, loss, LR, samples/s and epoch; updated at log steps only, drawn at
    most every REDRAW_INTERVAL_S.

    `enabled`: show progress at all (trainer.progress, and only on the main process)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool):
        self.total, self.start_step = total_steps, start_step
        self.label = job_label() if enabled else "train"
        live = enabled and console.is_terminal and sys.stdout.isatty()
        self.plain = enabled and not live  # plain lines to stdout at log steps instead of a bar
        self._progress = make_progress(shortened(self.label), console) if live else None
        self._task = None if self._progress is None else self._progress.add_task(
            self.label, total=total_steps, completed=start_step, status="")
        self._streams: list[tuple[logging.StreamHandler, TextIO]] = []
        self._started = time.perf_counter()
        self._drawn_at = -math.inf
        self._undrawn: tuple[int, float, dict[str, float]] | None = None  # the last update, if not shown

    def __enter__(self) -> ProgressBar:
        self._started = time.perf_counter()
        if self._progress is not None:
            handlers = terminal_log_handlers()  # before the bar starts: it replaces sys.stdout and sys.stderr
            self._progress.start()
            stream = _ConsoleStream(console)
            self._streams = [(h, h.setStream(stream)) for h in handlers]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._undrawn is not None:
            self._draw(time.perf_counter())
        if self._progress is not None:
            self._progress.stop()
            for handler, stream in self._streams:
                handler.setStream(stream)
            self._streams = []

    def update(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        """Show the run at a log step: at most every REDRAW_INTERVAL_S, at the last step, and when
        the bar ends (a run stopped early shows where it stopped)."""
        self._undrawn = (step, epoch, metrics)
        now = time.perf_counter()
        if now - self._drawn_at >= REDRAW_INTERVAL_S or step == self.total:
            self._draw(now)

    def _draw(self, now: float) -> None:
        step, epoch, metrics = self._undrawn
        self._undrawn = None
        self._drawn_at = now
        status = status_text(epoch, metrics)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=status, refresh=True)
        elif self.plain:
            print(self.plain_line(step, status, now - self._started), flush=True)

    def plain_line(self, step: int, status: str, elapsed: float) -> str:
        """`train 120/240 (50%)  loss ...  elapsed 0:00:01  eta 0:00:01`: one log step, for a log file."""
        done = step - self.start_step
        eta = clock(elapsed / done * (self.total - step)) if done > 0 else "-:--:--"
        return (f"{self.label} {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)  {status}  "
                f"elapsed {clock(elapsed)}  eta {eta}")


def print_summary(summary: dict[str, Any], run_dir: str) -> None:
    table = Table(title=f"optbench run: {summary['status']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("steps", f"{summary['steps']} ({summary['epochs']:.2f} epochs)")
    table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
    table.add_row("samples/s", f"{summary['samples_per_s']:,.0f}")
    for name, value in summary["final"].items():
        best = summary["best"].get(name)
        table.add_row(f"final {name}", f"{value:.4f}" + (f"  (best {best:.4f})" if best is not None else ""))
    table.add_row("parameters", f"{summary['params']:,}")
    table.add_row("optimizer state", f"{summary['optimizer_state_bytes'] / 2**20:.2f} MiB")
    table.add_row("run folder", run_dir)
    console.print(table)
