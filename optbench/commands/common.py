"""What every `optbench` command front-end shares: bad input reported as exit status 2, timestamped
output folders, and the parsing of Hydra's command line (flags and overrides).

Imports only the standard library and optbench's own light modules: the config and sweep modules
use the override parsing, and `optbench --help` imports this before any command runs.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import ParamSpec

from optbench.errors import ConfigError
from optbench.paths import configs_dir, recipes_dir

P = ParamSpec("P")

PRIMARY_CONFIG = "train"  # configs/train.yaml: what `optbench run` composes unless --config-name says otherwise

# The folder names of hydra.run.dir in configs/train.yaml, microseconds included: two commands
# started in the same second never share a folder.
TIMESTAMP = "%Y-%m-%d/%H-%M-%S-%f"

# Hydra's command-line flags (hydra/_internal/utils.py, get_args_parser), by what they mean here.
CONFIG_FLAGS = {"--config-path": "config_path", "-cp": "config_path", "--config-name": "config_name",
                "-cn": "config_name", "--config-dir": "config_dir", "-cd": "config_dir"}
MULTIRUN_FLAGS = {"--multirun", "-m"}
# Flags that print something instead of running: nothing runs, so nothing is validated before them.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--resolve",
              "--package", "-p", "--shell-completion", "-sc"}
# Flags followed by a value (`--info` takes one only when it is one of INFO_CHOICES).
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--experimental-rerun", *CONFIG_FLAGS}
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
HYDRA_FLAGS = CONFIG_FLAGS.keys() | MULTIRUN_FLAGS | INFO_FLAGS | VALUE_FLAGS | {"--run", "-r"}


def reports_bad_input(command: Callable[P, int]) -> Callable[P, int]:
    """`command` with a ConfigError turned into its message and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except ConfigError as e:
            return report(e)

    return wrapper


def report(error: ConfigError) -> int:
    """Print `error` for the user (a traceback only with HYDRA_FULL_ERROR=1); exit status 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    print(error.render(), file=sys.stderr)
    return 2


def timestamped_output(kind: str) -> Path:
    """`outputs/<kind>/<date>/<time>` under the current folder, not yet created: a command makes
    it once its input has been checked, so that bad input leaves no folder behind."""
    return Path("outputs", kind, datetime.now().strftime(TIMESTAMP))


def writable_folder(key: str, path: Path | str) -> Path:
    """The folder `path` names, if a command can create it (or write into it), else a ConfigError
    naming `key`: checked before any compute, and without creating it, so that bad input leaves
    nothing behind. `key` is what named it (`--out`, `hydra.run.dir`)."""
    text = str(path)
    if not text.strip():
        raise ConfigError(f"{key}={text!r}: empty; name a folder (an empty one would write into the current folder).")
    folder = Path(text).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}={text}: that is a file, not a folder; name a folder (a new one is created).")
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}={text}: that folder is not writable here; choose another.")
        return folder
    existing = next(p for p in folder.absolute().parents if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{key}={text}: {existing} is a file, so no folder can be made under it; choose another.")
    try:  # the one test that the file system agrees with (read-only mounts, /proc, permissions as root)
        os.rmdir(tempfile.mkdtemp(prefix=".optbench-probe-", dir=existing))
    except OSError as e:
        raise ConfigError(f"{key}={text}: no folder can be made in {existing} ({e.strerror}); "
                          f"choose a writable place.") from None
    return folder


def override_key(override: str) -> str:
    """The key that an override sets, adds (`+`) or deletes (`~`): `trainer.seed` of `+trainer.seed=1`."""
    return override.split("=", 1)[0].lstrip("+~")


def is_hydra_setting(override: str) -> bool:
    """Whether an override sets Hydra itself (`hydra.run.dir=...`, `hydra/launcher=joblib`)."""
    return override_key(override).startswith(("hydra.", "hydra/"))


def task_overrides(overrides: list[str]) -> list[str]:
    """The overrides that choose what the jobs run (Hydra's own settings left out)."""
    return [o for o in overrides if not is_hydra_setting(o)]


@dataclass(frozen=True)
class ConfigSource:
    """Where Hydra finds the configuration: what --config-path, --config-name and --config-dir say."""

    config_path: str | None = None  # the primary config's folder (absolute, or pkg://); None: configs/
    config_name: str = PRIMARY_CONFIG
    config_dir: str | None = None  # another folder of configs, searched after the primary one (absolute)

    @property
    def primary_path(self) -> str:
        return self.config_path or str(configs_dir())

    def flags(self) -> list[str]:
        """The command-line flags that choose this source (none for optbench's own configs)."""
        return [*(["--config-path", self.config_path] if self.config_path else []),
                *(["--config-name", self.config_name] if self.config_name != PRIMARY_CONFIG else []),
                *(["--config-dir", self.config_dir] if self.config_dir else [])]


@dataclass(frozen=True)
class Invocation:
    """One `optbench run` (or `check`) command line, parsed once: the same search path, primary
    config and overrides go to the pre-flight validation and to Hydra's main."""

    overrides: tuple[str, ...] = ()
    multirun: bool = False
    source: ConfigSource = field(default_factory=ConfigSource)
    flags: tuple[str, ...] = ()  # Hydra's other flags, with their values, passed on as given

    @property
    def shows_only(self) -> bool:
        """Whether Hydra prints something (--help, --cfg, --info, ...) instead of running."""
        return any(flag in INFO_FLAGS for flag in self.flags)

    def with_overrides(self, overrides: list[str]) -> Invocation:
        return replace(self, overrides=tuple(overrides))

    def argv(self) -> list[str]:
        """The arguments for Hydra's main, or for another `optbench run`: flags first, then the
        overrides as one run (Hydra's parser takes them as one positional argument)."""
        return [*self.flags, *(["--multirun"] if self.multirun else []), *self.source.flags(), *self.overrides]

    @classmethod
    def parse(cls, args: list[str]) -> Invocation:
        """Split Hydra's command-line arguments into flags and overrides.

        A relative --config-path, like --config-dir, is taken from the current folder (Hydra's
        own reading, relative to the app's Python file, means nothing to a user of a command).
        """
        overrides: list[str] = []
        flags: list[str] = []
        config: dict[str, str] = {}
        multirun = False
        i = 0
        while i < len(args):
            arg, i = args[i], i + 1
            if not arg.startswith("-"):
                overrides.append(arg)
                continue
            flag, equals, value = arg.partition("=")
            if flag not in HYDRA_FLAGS:
                long_flags = sorted(f for f in HYDRA_FLAGS if f.startswith("--"))
                raise ConfigError(f"{flag}: no such flag. Flags: {', '.join(long_flags)}; "
                                  f"anything else is an override, KEY=VALUE.")
            has_value = bool(equals)
            next_is_value = flag in VALUE_FLAGS or (flag in ("--info", "-i") and i < len(args) and args[i] in INFO_CHOICES)
            if next_is_value and not has_value:
                if i == len(args):
                    raise ConfigError(f"{flag}: needs a value.")
                value, has_value, i = args[i], True, i + 1
            if flag in CONFIG_FLAGS:
                config[CONFIG_FLAGS[flag]] = value
            elif flag in MULTIRUN_FLAGS:
                multirun = True
            else:
                flags += [flag, value] if has_value else [flag]
        config_path = config.get("config_path")
        if config_path is not None and not config_path.startswith("pkg://"):  # a package's configs as given
            config_path = _folder("--config-path", config_path)
        config_dir = config.get("config_dir")
        source = ConfigSource(config_path=config_path, config_name=config.get("config_name", PRIMARY_CONFIG),
                              config_dir=None if config_dir is None else _folder("--config-dir", config_dir))
        return cls(tuple(overrides), multirun, source, tuple(flags))


def _folder(flag: str, path: str) -> str:
    """The absolute folder that a config flag names (as Hydra makes it: os.path.abspath), checked."""
    folder = os.path.abspath(path)
    if not os.path.isdir(folder):
        raise ConfigError(f"{flag}={path}: no such folder ({folder}).")
    return folder


def config_folder(path: str) -> Path | None:
    """The folder of a config search path entry: a folder, or a package's (`pkg://a.b`) found
    without importing it; None where there is none."""
    if not path.startswith("pkg://"):
        return Path(path)
    spec = importlib.util.find_spec(path.removeprefix("pkg://").strip("/").replace("/", "."))
    folders = spec.submodule_search_locations if spec is not None else None
    return Path(folders[0]) if folders else None


def group_options(source: ConfigSource = ConfigSource()) -> dict[str, list[str]]:
    """Every config group that `optbench run` can choose from, with its options, as Hydra lists them
    (nested groups as `a/b`, Hydra's own `hydra/...` left out), read from the config folders.

    Hydra's `get_group_options` builds a new config repository for each group (deep copies of
    every stored recipe with it): seconds for `run --help`, where reading the folders takes
    milliseconds. The search path is Hydra's: --config-dir, the primary folder, then the recipes.
    """
    options: dict[str, set[str]] = {"recipe": {p.stem for p in recipes_dir().glob("*.yaml")}}
    for path in (source.config_dir, source.primary_path):
        root = None if path is None else config_folder(path)
        if root is None or not root.is_dir():
            continue
        for config in root.rglob("*.yaml"):
            group = config.parent.relative_to(root).as_posix()
            if group != "." and group.split("/")[0] != "hydra":
                options.setdefault(group, set()).add(config.stem)
    return {group: sorted(names) for group, names in sorted(options.items())}
