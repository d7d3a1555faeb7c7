"""Shell completion for `optbench`: `optbench completion bash|zsh|fish` prints a script to source;
the script asks `optbench __complete SHELL CURRENT LINE` for the candidates.

The query reads the config folders and YAML files only (no torch, Hydra or OmegaConf), so that a
TAB answers at once: subcommands, Hydra's flags, `group=option` (optimizer=ad<TAB>), the keys of
the chosen (or default) option of a group (optimizer.l<TAB>), and `optbench list` topics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optbench.commands.common import HYDRA_FLAGS, PRIMARY_CONFIG
from optbench.commands.common import group_options
from optbench.commands.listing import LIST_TOPICS
from optbench.errors import ConfigError
from optbench.paths import configs_dir

# Commands whose arguments are Hydra overrides of the training config.
OVERRIDE_COMMANDS = ("run", "check", "lr-find", "schedules", "bench", "compare")
SHELLS = ("bash", "zsh", "fish")

# Each script hands the query the word under the cursor as the shell splits it (bash splits at `=`
# and `:`) and the line up to the cursor; candidates come back one a line.
SCRIPTS = {
    "bash": """_optbench() {
    local IFS=$'\\n'
    COMPREPLY=($(optbench __complete bash "${COMP_WORDS[COMP_CWORD]}" "${COMP_LINE:0:COMP_POINT}" 2>/dev/null))
}
complete -o nospace -o default -F _optbench optbench
""",
    "zsh": """_optbench() {
    local -a candidates
    candidates=("${(@f)$(optbench __complete zsh "${words[CURRENT]}" "${BUFFER[1,CURSOR]}" 2>/dev/null)}")
    compadd -Q -S '' -- "${candidates[@]}"
}
compdef _optbench optbench
""",
    "fish": """complete -c optbench -f -a '(optbench __complete fish (commandline -ct) (commandline -cp))'
""",
}


def print_script(args: list[str]) -> int:
    """`optbench completion SHELL`: the script that makes TAB complete optbench in that shell."""
    if len(args) != 1 or args[0] not in SHELLS:
        raise ConfigError(f"completion {' '.join(args)}: name one shell: {', '.join(SHELLS)} "
                          f"(e.g. `source <(optbench completion bash)` in ~/.bashrc).")
    print(SCRIPTS[args[0]], end="")
    return 0


def query(args: list[str]) -> int:
    """`optbench __complete SHELL CURRENT LINE`: the candidates for the word under the cursor."""
    if len(args) != 3 or args[0] not in SHELLS:
        raise ConfigError(f"__complete {' '.join(args)}: the completion scripts' query takes SHELL CURRENT LINE "
                          f"(SHELL one of {', '.join(SHELLS)}); `optbench completion SHELL` prints a script.")
    shell, current, line = args
    words = line.split()  # overrides rarely hold quoted spaces; a half-typed quote must not fail a TAB
    if line[-1:].isspace() or not words:
        words.append("")
    # bash's word under the cursor starts after its last `=` or `:`: it takes the end of each candidate.
    cut = len(words[-1]) - len(current) if shell == "bash" and words[-1].endswith(current) else 0
    for candidate in candidates(words[1:]):
        done = not candidate.endswith(("=", ".", "/"))
        print(candidate[cut:] + (" " if done and shell != "fish" else ""))
    return 0


def candidates(words: list[str]) -> list[str]:
    """What may stand in place of the last of `words` (the command line after `optbench`)."""
    from optbench.cli import COMMANDS

    *before, partial = words
    if not before:
        return [c for c in COMMANDS if c.startswith(partial)]
    command = before[0]
    if command == "list":
        return [t for t in [*LIST_TOPICS, "param-groups"] if t.startswith(partial)]
    if command == "completion":
        return [s for s in SHELLS if s.startswith(partial)]
    if command == "reproduce":
        return [c for c in reproduce_candidates() if c.startswith(partial)]
    if command not in OVERRIDE_COMMANDS:
        return []  # report's paths and the like: the shell's own file completion
    if partial.startswith("-"):
        return sorted(f for f in HYDRA_FLAGS if f.startswith(partial) and f.startswith("--"))
    return [c for c in override_candidates(before[1:], partial) if c.startswith(partial)]


def reproduce_candidates() -> list[str]:
    """`optbench reproduce`'s words: its claims by name, the scales, its flags."""
    from optbench.commands.reproduce import all_claims
    from optbench.commands.reproduce.claim import SCALES

    return [*(c.name for c in all_claims()), *(f"scale={s}" for s in SCALES), "--list", "--out"]


def override_candidates(given: list[str], partial: str) -> list[str]:
    """What an override that starts with `partial` may become: `group=` then `group=option`, or a
    key (`optimizer.lr=`) of the options chosen in `given` (else the defaults of configs/train.yaml)."""
    groups = group_options()
    if "=" in partial:
        group = partial.split("=", 1)[0]
        return [f"{group}={option}" for option in groups.get(group, [])]
    chosen = {**default_choices(), **dict(o.split("=", 1) for o in given if o.split("=")[0] in groups)}
    config = load_yaml(configs_dir() / f"{PRIMARY_CONFIG}.yaml")
    for group, option in chosen.items():
        path = configs_dir() / group / f"{option}.yaml"
        if group in config or path.is_file():
            config[group] = {**(config.get(group) or {}), **(load_yaml(path) if path.is_file() else {})}
    del config["defaults"], config["hydra"]
    keys = [f"{key}=" for key in leaf_keys(config)]
    if "." in partial:
        return keys
    # A first word: the groups and the top-level keys, then what follows them.
    return sorted({*(f"{group}=" for group in groups), *(k.split(".")[0] + "." for k in keys if "." in k),
                   *(k for k in keys if "." not in k)})


def default_choices() -> dict[str, str]:
    """Group -> option that configs/train.yaml's defaults list chooses (`null` for none)."""
    defaults = load_yaml(configs_dir() / f"{PRIMARY_CONFIG}.yaml").get("defaults", [])
    return {k: str(v) for entry in defaults if isinstance(entry, dict) for k, v in entry.items()}


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml  # PyYAML, which OmegaConf reads YAML with, without OmegaConf's import

    return yaml.safe_load(path.read_text()) or {}


def leaf_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a config's values (lists and scalars), `_private` keys left out."""
    keys = []
    for key, value in node.items():
        if str(key).startswith("_") and key != "_target_":
            continue
        path = f"{prefix}{key}"
        keys += leaf_keys(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return keys
