"""How a result was made: the command, the versions and the machine behind a run.

Gathered once, when a run starts (one `git` call, no work per step), into summary.json
`provenance`; `optbench report` states it beside its tables.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch


def provenance() -> dict[str, Any]:
    """The command line, optbench, Python, torch and CUDA versions, the git commit of the
    repository the command ran in (None outside one), and the CPU and GPU model and count."""
    return {
        "command": command_line(),
        "optbench": _version("optbench"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # None on a CPU-only build of torch
        "git": git_state(Path.cwd()),
        "host": platform.node(),
        "cpu": {"model": cpu_model(), "count": os.cpu_count()},
        "gpu": gpu(),
    }


def command_line() -> str:
    """The command as typed: `optbench ...` whichever way Python was started. `sys.orig_argv` is
    what the process was started with (`optbench run` rewrites `sys.argv` for Hydra)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    for i, arg in enumerate(argv[:4]):
        if Path(arg).name == "optbench":  # the console script, or `python -m optbench`
            return shlex.join(["optbench", *argv[i + 1:]])
    return shlex.join(argv)


def git_state(where: Path) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the repository holding `where` (uncommitted changes to tracked files
    make it dirty); None outside a repository or without git."""
    try:
        # --exclude='*': the full commit hash, never a tag name; --dirty adds "-dirty".
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40", "--exclude=*"],
                                   cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if described.returncode != 0:
        return None
    commit, _, dirty = described.stdout.strip().partition("-")
    return {"commit": commit, "dirty": dirty == "dirty"}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> dict[str, Any] | None:
    """{"model", "count"} of the CUDA devices this process sees; None without one."""
    if not torch.cuda.is_available():
        return None
    return {"model": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
