"""Composing optbench's Hydra config: the search path, recipes, and the pre-flight compose.

`optbench run` composes every configuration it is about to run (each value of a sweep) before
Hydra creates a run folder, so that a bad override costs no folder, no compute and no traceback.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from optbench.errors import ConfigError
from optbench.paths import configs_dir, recipes_dir

PRIMARY_CONFIG = "train"


def register_recipes() -> None:
    """Make every `recipes/NAME.yaml` selectable as `recipe=NAME`.

    Recipes live in their own top-level folder (the layout users browse), so they are added to
    Hydra's ConfigStore as the `recipe` group instead of sitting inside `configs/`.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for path in sorted(recipes_dir().glob("*.yaml")):
        store.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose(overrides: list[str]) -> DictConfig:
    """The config (with its `hydra` node) that `optbench run OVERRIDES` would run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_recipes()  # so that `recipe=NAME` composes in-process too, not only under `optbench run`
    try:
        with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3", job_name="optbench"):
            return hydra_compose(PRIMARY_CONFIG, overrides=overrides, return_hydra_config=True)
    except Exception as e:  # Hydra and OmegaConf raise many types; all are bad input here.
        error = e
    raise ConfigError(explain_hydra_error(error, overrides))


def job_config(overrides: list[str]) -> DictConfig:
    """The run's own config (no `hydra` node), validated: what `Trainer` takes in Python code."""
    from optbench.smoke import expand
    from optbench.validate import validate_config

    cfg = compose(expand(overrides))
    with open_dict(cfg):
        del cfg["hydra"]
    validate_config(cfg)
    return cfg


def with_sweeper_params(overrides: list[str]) -> list[str]:
    """The overrides of a multirun with the config's `hydra.sweeper.params` in front (a recipe's
    arms), as Hydra's basic sweeper combines them: a key on the command line replaces the config's."""
    from optbench.smoke import key

    params = compose(next(sweep_variants(overrides))).hydra.sweeper.get("params") or {}
    own = {key(o) for o in overrides}
    return [*(f"{k}={v}" for k, v in params.items() if key(str(k)) not in own), *overrides]


def sweep_variants(overrides: list[str]) -> Iterator[list[str]]:
    """Override lists that cover every value of every swept key (not every combination).

    `-m optimizer=sgd,adamw trainer.seed=0,1` yields 3 lists: the first value of each key, then
    each other value of one key at a time, so a bad value anywhere is found with few composes.
    """
    choices = sweep_choices(overrides)
    first = [values[0] for values in choices]
    yield first
    for i, values in enumerate(choices):
        for value in values[1:]:
            yield first[:i] + [value] + first[i + 1 :]


def sweep_choices(overrides: list[str]) -> list[list[str]]:
    """Each override as the list of single-valued overrides it sweeps (`a=1,2` -> `a=1`, `a=2`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # Hydra's parser raises several types; all are bad input here
        raise ConfigError(explain_hydra_error(e, overrides)) from None
    choices: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.value_type == ValueType.INTERVAL_SWEEP:
            # A search interval (Optuna's sweeper): its two ends stand for every value between.
            interval = override.value()
            values = [f"{key}={interval.start}", f"{key}={interval.end}"]
        elif override.is_sweep_override():
            values = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            values = [override.input_line]
        choices.append(values or [override.input_line])
    return choices


def explain_hydra_error(error: Exception, overrides: list[str]) -> str:
    """One paragraph from a Hydra/OmegaConf error: the key, the value, what is allowed."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        options = sorted(error.options or [])
        close = difflib.get_close_matches(name, options, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        if options:
            return f"{group}={name}: no such option.{hint} Available: {', '.join(options)}."
        return f"{group}={name}: no such config group or option."
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    mandatory = re.match(r"You must specify '(([^'@]+)@([^']+))'.*Available options: (.*)", text)
    if mandatory:  # a `???` default, like Lookahead's inner optimizer
        override, group, key, options = mandatory.groups()
        return (f"{key} is not set: choose one with {override}=NAME. "
                f"Available: {', '.join(options.split())}.")
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown:
        return _unknown_key(unknown.group(1), overrides)
    return text


def _unknown_key(key: str, overrides: list[str]) -> str:
    """Message for an override of a key that the config does not have, with the closest key."""
    parent, _, name = key.rpartition(".")
    others = [o for o in overrides if not o.startswith(f"{key}=")]
    try:
        node = OmegaConf.select(compose(others), parent) if parent else None
    except ConfigError:
        node = None
    siblings = [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f" Did you mean '{parent}.{close[0]}'?" if close else ""
    listing = f" Keys of {parent}: {', '.join(siblings)}." if siblings else ""
    return (
        f"{key}: no such key in the config.{hint}{listing} "
        f"(`optbench run --cfg job` prints the config; +{key}=VALUE adds a new key on purpose.)"
    )


def validate_overrides(overrides: list[str], multirun: bool) -> DictConfig:
    """Compose and validate every configuration that the command would run; return the first."""
    from optbench.validate import validate_config

    variants = sweep_variants(with_sweeper_params(overrides)) if multirun else iter([overrides])
    problems: list[str] = []
    warnings: list[str] = []
    first: DictConfig | None = None
    for variant in variants:
        try:
            cfg = compose(variant)
            warnings.extend(w for w in validate_config(cfg) if w not in warnings)
            if first is None:
                first = cfg
        except ConfigError as e:
            problems.extend(p for p in e.problems if p not in problems)
    if problems:
        raise ConfigError(problems)
    for warning in warnings:
        print(f"optbench: warning: {warning}", file=sys.stderr)
    assert first is not None
    if not multirun:
        _refuse_to_overwrite(first)
    return first


def _refuse_to_overwrite(cfg: DictConfig) -> None:
    """A run folder that already holds a run is continued (trainer.resume) or left alone."""
    run_dir = Path(str(cfg.hydra.run.dir))
    holds_run = (run_dir / "summary.json").exists() or (run_dir / "checkpoints").exists()
    if holds_run and cfg.trainer.resume is None:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: that folder already holds a run. Continue it with "
            f"trainer.resume=auto, or choose another folder; optbench never overwrites a run."
        )

