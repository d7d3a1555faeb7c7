"""Where optbench's config groups and recipes are, in a source checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """`configs/`: inside the package when installed from a wheel, else at the repository's top."""
    installed = _PACKAGE / "_configs"
    return installed if installed.is_dir() else _PACKAGE.parent / "configs"


def recipes_dir() -> Path:
    """`recipes/`, found the same way as `configs/`."""
    installed = _PACKAGE / "_recipes"
    return installed if installed.is_dir() else _PACKAGE.parent / "recipes"


def describe(path: Path) -> str:
    """The one-line description of a config file: its first comment line."""
    with path.open() as f:
        for line in f:
            line = line.strip()
            if line.startswith("# @package"):
                continue
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line:
                break
    return ""
