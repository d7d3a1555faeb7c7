"""Checkpoints: atomic writes, safe loads, and the RNG states that make a resume exact."""

from __future__ import annotations

import logging
import os
import random
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from optbench.errors import ConfigError
from optbench.run_folder import LAST, PREVIOUS, RunFolder, temporary_beside

log = logging.getLogger("optbench")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that `path` is always a complete checkpoint.

    The bytes go to a temporary file that is flushed to disk and then renamed over `path`
    (a rename is atomic on POSIX): a crash mid-write leaves the previous checkpoint intact.
    The `last.pt` it replaces stays as `previous.pt` beside it, in case the newest one is
    ever damaged after it was written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_beside(path) as tmp:  # a failed write (a full disk) leaves no .last.pt.tmp
        with open(tmp, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as e:  # torch's zip writer turns a failed write into this, the OSError its context
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
        if path.exists() and path.name == LAST:  # best.pt's predecessor would replace last.pt's
            with temporary_beside(path.with_name(PREVIOUS)) as keep:
                keep.unlink(missing_ok=True)
                os.link(path, keep)  # a second name for the old checkpoint, then an atomic rename
                os.replace(keep, path.with_name(PREVIOUS))
        os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the renames themselves durable
    finally:
        os.close(directory)


def load(path: Path, key: str = "trainer.resume") -> dict[str, Any]:
    """Load a checkpoint without running any code from it (`weights_only=True`)."""
    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "no such checkpoint file"
        raise ConfigError(f"{key}={path}: {what} (checkpoints are RUN_DIR/checkpoints/last.pt).")
    try:
        damaged = failed_checksum(path)
        with warnings.catch_warnings():  # a foreign pickle's protocol: the error below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or tampered files raise many types.
        raise ConfigError(f"{key}={path}: not a readable optbench checkpoint: {unreadable(path, e)}.") from None
    if damaged is not None:
        raise ConfigError(f"{key}={path}: not a readable optbench checkpoint: {damaged_member(damaged)}.")
    if not isinstance(state, dict) or "model" not in state or "progress" not in state:
        raise ConfigError(f"{key}={path}: not an optbench checkpoint (no model or progress in it).")
    return state


def failed_checksum(path: Path) -> str | None:
    """The first member of `path`'s zip archive whose bytes fail their CRC-32, None when all pass.
    torch.load never checks them: a checkpoint with flipped bits in a tensor loads, its tensor wrong.
    The extra read is cheap: 35 ms on a 50 MB checkpoint (torch.load itself: 48 ms; one CPU core)."""
    with zipfile.ZipFile(path) as archive:
        return archive.testzip()


def damaged_member(member: str) -> str:
    return f"the file is damaged: {member} inside it fails its checksum"


def unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file that torch.load refused, from the file itself: torch's own
    messages (`101`, an empty one, `pop from empty list`) name its parser's state, not the file's."""
    text = " ".join(str(error).split())
    if "Unsupported global" in text or "GLOBAL" in text:
        return "it holds pickled code or objects, which optbench never loads"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    if size == 0:
        return "the file is empty (0 bytes)"
    try:
        archive = zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # an archive, with a damaged index
        archive = True
    if not archive:
        if head == b"PK\x03\x04":
            return (f"the file is truncated ({size:,} bytes): the end of its zip archive (what torch.save writes) "
                    f"is missing")
        return f"not a file that torch.save writes (a zip archive); it starts with {head!r}"
    try:
        bad_member = failed_checksum(path)
    except Exception as e:  # zipfile fails on a damaged archive in its own ways (EOFError, BadZipFile, zlib.error)
        reason = " ".join(str(e).split())[:100]
        return f"the file is damaged: its zip archive cannot be read ({type(e).__name__}: {reason})"
    if bad_member is not None:
        return damaged_member(bad_member)
    return f"the file is a damaged or foreign archive ({text[:200]})"


def newest_complete(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `folder` that loads (`last.pt`, else `previous.pt`), and its state."""
    problems = []
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            return path, load(path)
        except ConfigError as e:
            problems.append(str(e))
            log.warning("skipping %s: %s", path, e)
    if problems:
        raise ConfigError(f"trainer.resume=auto: no complete checkpoint in {folder}: " + " ".join(problems))
    return None


def find_resume(resume: str | None, folder: RunFolder) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint that `trainer.resume` names, and its state; None to start afresh."""
    if resume is None:
        return None
    if resume == "auto":
        found = newest_complete(folder.checkpoints)
        if found is None:
            log.info("trainer.resume=auto: no checkpoint in %s, starting afresh", folder.path)
            return None
        path, state = found
    else:
        path = Path(resume).expanduser()
        state = load(path)
    if "sharded" in state:  # named relative to the checkpoint, so that a run folder can move
        state["sharded"] = str(path.parent / state["sharded"])
    return path, state


def resume_into(load: Callable[[dict[str, Any]], None], resume: str | None, folder: RunFolder,
                cfg: DictConfig) -> Path | None:
    """Give `load` the state of the checkpoint that `trainer.resume` names; its path (None: none).
    A state that does not fit is bad input: the message names what differs in the configs."""
    found = find_resume(resume, folder)
    if found is None:
        return None
    path, state = found
    try:
        load(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(
            f"trainer.resume={path}: the checkpoint does not fit this configuration"
            f"{config_differences(state.get('config', {}), cfg)} ({' '.join(str(e).split())[:200]})."
        ) from None
    return path


def sharded_folders(path: Path) -> list[str]:
    """The folder of FSDP2 shards that the checkpoint at `path` names, if it names one and loads."""
    try:
        return [load(path)["sharded"]] if path.exists() else []
    except (ConfigError, KeyError):
        return []


def config_differences(saved: dict[str, Any], cfg: DictConfig) -> str:
    """`: it differs in model.depth (20 -> 32), ...` between a checkpoint's config and `cfg`."""
    current = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(current, dict)
    changed = []
    for group in ("model", "data", "optimizer", "params", "scheduler"):
        old, new = saved.get(group, {}), current.get(group, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changed.append(f"{group}.{key} ({old.get(key)} -> {new.get(key)})")
    return f": it differs in {', '.join(changed[:6])}" if changed else ""


def optimizer_differences(saved: dict[str, Any], cfg: DictConfig) -> list[str]:
    """`optimizer._target_ (torch.optim.AdamW -> torch.optim.SGD)` for each optimizer class that a
    checkpoint's run used and this run would not. torch loads any optimizer's state into any other
    with as many parameter groups, so another class's state would be taken as this one's."""
    groups = ("optimizer", "gan")
    current = {g: OmegaConf.to_container(cfg[g], resolve=True) for g in groups if cfg.get(g) is not None}
    old, new = _targets(saved, groups), _targets(current, groups)
    return [f"{key} ({old.get(key)} -> {new.get(key)})" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def refuse_other_optimizer(path: Path | str, saved: dict[str, Any], cfg: DictConfig) -> None:
    """A resume whose checkpoint holds another optimizer's state is bad input, named before a run."""
    differences = optimizer_differences(saved, cfg)
    if differences:
        raise ConfigError(
            f"trainer.resume={path}: the checkpoint holds the state of other optimizers than this run's: "
            f"{', '.join(differences)}. Resume with the checkpoint's optimizer, or start afresh without "
            f"trainer.resume.")


def _targets(config: Any, groups: tuple[str, ...], prefix: str = "") -> dict[str, str]:
    """Every `_target_` under `groups` of a plain config, by its dotted key."""
    if not isinstance(config, dict):
        return {}
    found: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if prefix == "" and key not in groups:
            continue
        if key == "_target_":
            found[dotted] = str(value)
        else:
            found.update(_targets(value, groups, dotted + "."))
    return found


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, in a form `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matrix products.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic
