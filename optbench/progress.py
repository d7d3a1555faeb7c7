"""The terminal view of a run: a rich progress bar while training and a summary table after."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


class ProgressBar:
    """Step, epoch, loss, LR, samples/s and ETA; updated at log steps only (cheap)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool):
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            # Redrawn at log steps only: a refresh thread would take the GIL and a core from
            # training 10 times a second.
            auto_refresh=False,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        status = f"epoch {epoch:.2f}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.3g}"
        if "samples_per_s" in metrics:
            status += f"  {metrics['samples_per_s']:,.0f} samples/s"
        self._progress.update(self._task, completed=step, status=status, refresh=True)


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
