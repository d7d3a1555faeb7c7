"""One writer per run folder: an exclusive `flock` on a lock file inside it.

The process that runs a job takes the lock before anything is written into the folder and holds it
for the run's whole life; the OS releases it when the process ends, however it ends (SIGKILL
included), so a lock never outlives its writer. The lock file holds the writer's PID, which a
refused second writer names.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from optbench.errors import ConfigError
from optbench.run_folder import LOCK, writing


class FolderLock:
    """The held lock of one run folder; `release` (or the end of the process) lets it go."""

    def __init__(self, fd: int, path: Path):
        self._fd = fd
        self.path = path

    @classmethod
    def take(cls, folder: Path, what: str | None = None) -> FolderLock:
        """Lock `folder` (created if missing) for this process; ConfigError naming the holder's PID
        if another process writes it (`what`: how the message names the folder)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(_held_message(folder, what, holder(folder))) from None
        try:
            with writing(path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # a full disk: let the lock go (the error names the file)
            os.close(fd)
            raise
        return cls(fd, path)

    def release(self) -> None:
        os.close(self._fd)  # closing the only descriptor of the open file releases the flock


def holder(folder: Path) -> int | None:
    """The PID of the live process that writes `folder`; None when no process holds its lock.

    Looks without creating anything: a folder or lock file that does not exist is not held.
    """
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1  # -1: held, the PID not written yet
    finally:
        os.close(fd)  # also lets go of the shared lock taken to look
    return None


def refuse_if_held(folder: Path, what: str | None = None) -> None:
    """ConfigError (exit status 2) when a live process writes `folder`."""
    pid = holder(folder)
    if pid is not None:
        raise ConfigError(_held_message(folder, what, pid))


def _held_message(folder: Path, what: str | None, pid: int | None) -> str:
    """`what` (default `hydra.run.dir=FOLDER`) is written by process PID: what to do about it."""
    known = pid is not None and pid > 0
    return (f"{what or f'hydra.run.dir={folder}'}: {f'process {pid}' if known else 'another process'} is "
            f"writing that run folder (it holds {folder / LOCK}); a run folder has one writer at a time. "
            f"Wait for it to end (or stop it: kill {pid if known else 'PID'}), then run the same command "
            f"again; or choose another folder.")
