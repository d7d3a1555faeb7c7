"""What a run shows on the terminal and in a log file: the progress bar at 80 columns, log lines
above it, plain progress lines when stdout is not a terminal (a sweep's jobs named), the command
that resumes an interrupted run, and `optbench report`'s tables at 80 columns."""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from conftest import run_cli
from optbench import progress
from optbench.cli import main
from test_report import sweep

CLOCK = r"\d:\d\d:\d\d"
METRICS = {"loss": 0.1234, "lr": 4.28e-4, "samples_per_s": 81144.0}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("total", [240, 450_360])
@pytest.mark.parametrize("label", ["train", "#12 optimizer=adamw,optimizer.lr=0.003,trainer.seed=2"])
def test_bar_keeps_steps_elapsed_and_eta_at_80_columns(total, label, monkeypatch):
    screen = Console(file=io.StringIO(), width=80, force_terminal=True, record=True)
    monkeypatch.setattr(progress, "console", screen)
    monkeypatch.setattr(sys, "stdout", _Terminal())
    monkeypatch.setattr(progress, "job_label", lambda: label)
    with progress.ProgressBar(total, 0, enabled=True) as bar:
        time.sleep(1.05)  # an elapsed time that shows
        bar.update(total // 3, 3.5, METRICS)
    # The screen's record holds every redraw, one after another (the cursor moves are not kept).
    shown = progress.shortened(label)
    last = shown + screen.export_text().rstrip("\n").split(shown)[-1]
    assert re.fullmatch(rf"{re.escape(shown)} .* {total // 3}/{total} 0:00:01 ({CLOCK}|-:--:--) loss 0\.1234.*", last), last
    assert len(last) <= 80


def test_plain_lines_come_at_most_every_redraw_interval_and_the_last_at_the_end(monkeypatch, capsys):
    """Log steps faster than REDRAW_INTERVAL_S (a small model logs many times a second) print the
    first and then nothing until the interval has passed; the run's last step always prints, and a
    bar that ends before it (early stopping, a stop signal) shows the last update it was given."""
    def printed() -> list[str]:  # each plain line's label and step/total
        return [line.split(" (")[0] for line in capsys.readouterr().out.splitlines()]

    monkeypatch.setattr(progress, "REDRAW_INTERVAL_S", 3600.0)
    with progress.ProgressBar(100, 0, enabled=True) as bar:  # stdout is captured: plain lines
        for step in (10, 20, 30):
            bar.update(step, step / 12, METRICS)
        assert printed() == ["train 10/100"]
    assert printed() == ["train 30/100"]
    with progress.ProgressBar(100, 0, enabled=True) as bar:
        for step in (90, 100):
            bar.update(step, step / 12, METRICS)
        assert printed() == ["train 90/100", "train 100/100"]
    assert capsys.readouterr().out == ""  # nothing left to show
    monkeypatch.setattr(progress, "REDRAW_INTERVAL_S", 0.0)
    with progress.ProgressBar(100, 0, enabled=True) as bar:
        for step in (10, 20, 30):
            bar.update(step, step / 12, METRICS)
    assert len(capsys.readouterr().out.splitlines()) == 3  # every update, when the interval has passed


def test_log_lines_print_above_the_bar_not_into_it(monkeypatch):
    screen = Console(file=io.StringIO(), width=80, force_terminal=True)
    monkeypatch.setattr(progress, "console", screen)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    handler = logging.StreamHandler(sys.stdout)  # as Hydra's console handler writes: to stdout
    logging.getLogger().addHandler(handler)
    try:
        with progress.ProgressBar(240, 0, enabled=True) as bar:
            bar.update(10, 0.5, METRICS)
            logging.getLogger("optbench").warning("checkpoint written")
            bar.update(20, 1.0, METRICS)
        assert handler.stream is terminal  # given back when the bar ends
    finally:
        logging.getLogger().removeHandler(handler)
    # The bar's line is cleared (CR, erase line), the log line written there, the bar drawn under it.
    raw = screen.file.getvalue()
    assert "\r\x1b[2Kcheckpoint written\n" in raw, repr(raw)
    assert "10/240" in raw.split("checkpoint written\n")[1].split("\r")[0]
    assert terminal.getvalue() == ""  # nothing written past the console, into the bar's line


def test_a_sweeps_progress_lines_name_their_job(workdir):
    result = run_cli("run", "-m", "optimizer=sgd,adamw", "trainer.max_steps=10", cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = [line.split(" 10/10 ")[0] for line in result.stdout.splitlines() if " 10/10 (100%)" in line]
    assert jobs == ["#0 optimizer=sgd,trainer.max_steps=10", "#1 optimizer=adamw,trainer.max_steps=10"]


def test_a_joblib_sweeps_plain_lines_name_the_job_each_came_from(workdir):
    """Jobs in joblib's worker processes write to the same pipe at once: each plain line names its job."""
    result = run_cli("run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer=sgd,adamw",
                     "trainer.max_steps=4", "trainer.log_every=2", cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # the jobs ran in joblib's workers
    lines = [line for line in result.stdout.splitlines() if re.search(r" [24]/4 \(", line)]
    labels = {"#0 optimizer=sgd,trainer.log_every=2,trainer.max_steps=4",
              "#1 optimizer=adamw,trainer.log_every=2,trainer.max_steps=4"}
    found = sorted(line.split(" (")[0] for line in lines)  # label and step/total
    assert found == sorted(f"{label} {step}" for label in labels for step in ("2/4", "4/4")), lines
    for line in lines:  # plain text: no terminal codes, no carriage returns
        assert "\x1b" not in line and "\r" not in line
        assert re.fullmatch(rf"#\d \S+ [24]/4 \((50|100)%\)  loss \d\.\d{{4}}  lr \S+  [\d,]+ samples/s  epoch \S+  "
                            rf"elapsed {CLOCK}  eta {CLOCK}", line), line


def _interrupt_after_first_line(command: list[str], cwd: Path) -> str:
    """Start `command`, send Ctrl-C (SIGINT) once it prints its first progress line; its output."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in process.stdout:
        lines.append(line)
        if re.match(r"train \d+/", line):
            process.send_signal(signal.SIGINT)
            break
    lines += process.stdout.read().splitlines(keepends=True)
    assert process.wait(timeout=120) == 1, "".join(lines)[-2000:]  # interrupted: exit status 1
    return "".join(lines)


def test_ctrl_c_prints_the_exact_command_that_resumes_and_it_does(workdir):
    optbench = [sys.executable, "-m", "optbench"]
    output = _interrupt_after_first_line([*optbench, "run", "trainer.max_steps=100000", "optimizer.lr=0.002"], workdir)
    # stdout is a pipe here, as in a SLURM log or `| tee`: a plain line at each log step, no bar.
    first = next(line for line in output.splitlines() if line.startswith("train "))
    assert re.fullmatch(rf"train 10/100000 \(0%\)  loss \d+\.\d{{4}}  lr 0\.002  [\d,]+ samples/s  epoch 0\.83  "
                        rf"elapsed {CLOCK}  eta {CLOCK}", first), first
    command = re.search(r"To resume: (.+)$", output, re.MULTILINE).group(1)
    words = shlex.split(command)
    run_dir = next(w for w in words if w.startswith("hydra.run.dir=")).split("=", 1)[1]
    assert words == ["optbench", "run", "trainer.max_steps=100000", "optimizer.lr=0.002",
                     f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    assert Path(run_dir).is_absolute() and (Path(run_dir) / "checkpoints" / "last.pt").is_file()

    resumed = _interrupt_after_first_line([*optbench, *words[1:]], workdir)  # the printed command, as given
    assert re.search(rf"resumed from {re.escape(run_dir)}/checkpoints/last\.pt at step \d+", resumed), resumed[-2000:]


def test_report_tables_fit_80_columns_without_cutting_a_cell(tmp_path, monkeypatch, capsys):
    accs = {("sgd", 0.01): [0.81, 0.82, 0.8], ("sgd", 0.1): [0.9, 0.91, 0.92],
            ("adamw", 0.001): [0.95, 0.96, 0.955], ("adamw", 0.003): [0.97, 0.975, 0.965]}
    root = sweep(tmp_path / "sweep", accs)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    assert max(len(line) for line in out.splitlines() if not line.startswith("wrote ")) <= 80
    runs = out[out.index("Runs"):out.index("LR sensitivity")]
    header = " ".join(re.findall(r"┃([^┃\n]*)", runs))
    for label in ("run", "optimizer", "lr", "seed", "final", "best", "val/acc"):
        assert label in header.split(), header
    assert "not shown at this width: " in runs and "(report.csv and report.html have them)" in runs
    assert re.search(r"│ adamw +│ 0\.003 +│", runs)  # values whole, each in its column

    monkeypatch.setenv("COLUMNS", "250")
    assert main(["report", str(root), "--out", str(tmp_path / "wide")]) == 0
    assert "not shown at this width" not in capsys.readouterr().out
