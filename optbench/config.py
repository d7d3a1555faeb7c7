"""Composing optbench's Hydra config: the search path, recipes, smoke scale, and the pre-flight compose.

`optbench run` composes every configuration it is about to run (each value of a sweep) before
Hydra creates a run folder, so that a bad override costs no folder, no compute and no traceback.
It composes from the same `ConfigSource` (--config-path, --config-name, --config-dir) that it
hands Hydra's main, so that what is validated is what runs.
"""

from __future__ import annotations

import difflib
import re
import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from optbench.commands.common import ConfigSource, group_options, override_key
from optbench.errors import ConfigError
from optbench.run_folder import RunFolder

SMOKE = "smoke=true"


def compose(overrides: list[str], source: ConfigSource = ConfigSource()) -> DictConfig:
    """The config (with its `hydra` node) that `optbench run [FLAGS] OVERRIDES` would run, the
    flags being those that choose `source`."""
    from hydra import compose as hydra_compose

    try:
        with hydra_session(source):
            cfg = hydra_compose(source.config_name, overrides=overrides, return_hydra_config=True)
        _resolve_now(cfg)
        return cfg
    except Exception as e:  # Hydra and OmegaConf raise many types; all are bad input here.
        error = e
    raise ConfigError(explain_hydra_error(error, overrides, source))


def _resolve_now(cfg: DictConfig) -> None:
    """Resolve every interpolation of the job's config and of its output folders, so that one that
    names no key (`optimizer.lr=${nosuch.key}`) is bad input here, not a traceback at first use.
    Hydra's other settings hold values that exist only in a running job (hydra.job.num)."""
    for key in [*(k for k in cfg if k != "hydra"), "hydra.run.dir", "hydra.sweep.dir"]:
        value = OmegaConf.select(cfg, str(key), throw_on_missing=False)
        if OmegaConf.is_config(value):
            OmegaConf.to_container(value, resolve=True)


@contextmanager
def hydra_session(source: ConfigSource) -> Iterator[None]:
    """Hydra initialized with the search path that its main builds from the same flags
    (`_run_hydra` in hydra/_internal/utils.py): the primary folder, then --config-dir in front of
    the structured configs. Hydra's public `initialize_config_dir` has no --config-dir."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    version.setbase("1.3")
    search_path = create_config_search_path(source.primary_path)
    if source.config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{source.config_dir}",
                            anchor=SearchPathQuery(provider="schema"))
    try:  # the job's name as configs/train.yaml sets it (hydra.job.name), which wins over this one
        Hydra.create_main_hydra2(task_name="optbench", config_search_path=search_path)
        yield
    finally:
        restore_gh_from_backup(backup)


def job_config(overrides: list[str], source: ConfigSource = ConfigSource()) -> DictConfig:
    """The run's own config (no `hydra` node), validated: what `Trainer` takes in Python code."""
    from optbench.validate import validate_config

    cfg = compose(expand_smoke(overrides, source), source)
    with open_dict(cfg):
        del cfg["hydra"]
    validate_config(cfg)
    return cfg


def expand_smoke(overrides: list[str], source: ConfigSource = ConfigSource()) -> list[str]:
    """`overrides` with the configured recipe's smoke overrides in front when `smoke=true` is among them.

    A recipe lists what makes it tiny in `smoke_overrides` (a small model and data, a few steps).
    They are ordinary overrides, put before the user's own, so a user's override of the same key
    wins; a group choice there (`data=synthetic`) swaps the whole group, as on the command line.
    """
    if SMOKE not in overrides:
        return overrides
    # One configuration of a sweep (`-m ... trainer.seed=0,1`) names the recipe, and so its smoke overrides.
    extra = [str(o) for o in compose(next(sweep_variants(overrides)), source).get("smoke_overrides") or []]
    if not extra:
        raise ConfigError("smoke=true: this configuration lists no smoke_overrides; recipes do (recipe=NAME).")
    own = {override_key(o) for o in overrides}
    return [*(o for o in extra if override_key(o) not in own), *overrides]


def with_sweeper_params(overrides: list[str], source: ConfigSource = ConfigSource()) -> list[str]:
    """The overrides of a multirun with the config's `hydra.sweeper.params` in front (a recipe's
    arms), as Hydra's basic sweeper combines them: a key on the command line replaces the config's."""
    params = compose(next(sweep_variants(overrides)), source).hydra.sweeper.get("params") or {}
    own = {override_key(o) for o in overrides}
    return [*(f"{k}={v}" for k, v in params.items() if override_key(str(k)) not in own), *overrides]


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


def explain_hydra_error(error: Exception, overrides: list[str], source: ConfigSource = ConfigSource()) -> str:
    """One paragraph from a Hydra/OmegaConf error: the key, the value, what is allowed."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    unparsable = next(filter(None, map(_unparsable, overrides)), None)
    if unparsable is not None:  # Hydra's parser names a grammar token, not the override or the fix
        return unparsable
    if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
        key = str(error.full_key)
        given = next((o for o in overrides if override_key(o) == key), key)
        reason = str(error).splitlines()[0]
        return (f"{given}: {reason}. An interpolation ${{KEY}} names another key of the config "
                f"(`optbench run --cfg job` prints them).")
    if isinstance(error, MissingConfigException) and error.missing_cfg_file == source.config_name:
        folders = " or ".join(f for f in (source.primary_path, source.config_dir) if f)
        return (f"--config-name={source.config_name}: no such config in {folders} "
                f"(a primary config is looked for there: --config-path and --config-dir choose the folders).")
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        path = next((o for o in overrides if _names_a_file(o)), None)
        if path is not None:
            return _option_path(path, source)
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
        return _unknown_key(unknown.group(1), overrides, source)
    merging = re.match(r"Error merging override (([^=]+)=.*)", text)
    if merging:  # a value where the config has a group of settings (trainer.ema=[1,2])
        return _not_a_group(merging.group(1), override_key(merging.group(2)), overrides, source)
    return text


def _not_a_group(override: str, key: str, overrides: list[str], source: ConfigSource) -> str:
    """Message for an override whose value cannot replace what the config has at `key`."""
    try:
        node = OmegaConf.select(compose([o for o in overrides if override_key(o) != key], source), key)
    except ConfigError:
        node = None
    if OmegaConf.is_dict(node):
        return (f"{override}: {key} is a group of settings ({', '.join(map(str, node))}); set one with "
                f"{key}.FIELD=VALUE.")
    return f"{override}: cannot replace the value of {key} in the config (`optbench run --cfg job` prints it)."


def _unknown_key(key: str, overrides: list[str], source: ConfigSource) -> str:
    """Message for an override of a key that the config does not have, with the closest key
    (at the top, the closest config group too: `optimizr=adamw` means `optimizer=adamw`)."""

    parent, _, name = key.rpartition(".")
    others = [o for o in overrides if override_key(o) != key]
    try:
        node = OmegaConf.select(compose(others, source), parent) if parent else None
    except ConfigError:
        node = None
    siblings = [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []
    if not parent:
        groups = sorted(g for g in group_options(source) if "/" not in g)
        given = next((o for o in overrides if override_key(o) == key), key)
        if name in groups:  # a group that this config's defaults list does not choose from
            return (f"{given}: the {name} group is not in this configuration's defaults; add it with "
                    f"+{given.lstrip('+~')}.")
        close = difflib.get_close_matches(name, groups, n=1)
        hint = f" Did you mean '{close[0]}{given[given.index('='):]}'?" if close and "=" in given else ""
        return (f"{given}: no such config group or key.{hint} Groups: {', '.join(groups)} "
                f"(`optbench list` shows their options; +{key}=VALUE adds a new key on purpose).")
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f" Did you mean '{parent}.{close[0]}'?" if close else ""
    listing = f" Keys of {parent}: {', '.join(siblings)}." if siblings else ""
    return (
        f"{key}: no such key in the config.{hint}{listing} "
        f"(`optbench run --cfg job` prints the config; +{key}=VALUE adds a new key on purpose.)"
    )


def _unparsable(override: str) -> str | None:
    """What is wrong with an override that Hydra's grammar cannot read (None: it reads it),
    named by position: Hydra's own message names only the grammar's tokens."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(override)
        return None
    except Exception as e:  # Hydra's parser raises several types; all are this override's syntax
        reason = " ".join(str(e).split())
    foreign = next(((i, c) for i, c in enumerate(override) if not c.isascii()), None)
    if foreign is not None:
        at, char = foreign
        plain = unicodedata.normalize("NFKC", char)
        hint = f"; it looks like '{plain}', type that instead" if plain.isascii() and plain != char else ""
        return (f"{override}: non-ASCII character '{char}' ({unicodedata.name(char, f'U+{ord(char):04X}')}) "
                f"at position {at + 1}{hint}. Keys and unquoted values are ASCII; quote a value that "
                f"needs other characters ('...').")
    if override.rstrip().endswith(","):
        return f"{override}: ends with a comma; a sweep lists its values with one after each comma (a,b,c)."
    if ",," in override:
        return f"{override}: two commas in a row; a sweep lists its values with one after each comma (a,b,c)."
    if "=" not in override:
        return f"{override}: not an override; write KEY=VALUE (optimizer.lr=3e-4) or GROUP=OPTION (optimizer=sgd)."
    return (f"{override}: cannot be read as an override ({reason}); write KEY=VALUE, quoting a value "
            f"with spaces or brackets (see https://hydra.cc/docs/advanced/override_grammar/basic/).")


def _names_a_file(override: str) -> bool:
    """Whether a group choice names a file (`recipe=/some/path.yaml`) instead of an option."""
    key, _, value = override.partition("=")
    return "." not in key and (value.endswith((".yaml", ".yml")) or "/" in value)


def _option_path(override: str, source: ConfigSource) -> str:
    """The message for a group choice that names a file: a group takes an option's name."""

    key, _, value = override.partition("=")
    group = override_key(key).rpartition("@")[0] or override_key(key)
    options = group_options(source).get(group, [])
    listing = f" one of {', '.join(options)}" if options else " the name of an option"
    header = " (a recipe file starts with `# @package _global_`)" if group == "recipe" else ""
    return (f"{override}: {group} takes{listing}, not a path. A {group} of your own: put it in a folder "
            f"as DIR/{group}/NAME.yaml{header} and run with --config-dir DIR {group}=NAME.")


def validate_overrides(overrides: list[str], multirun: bool, source: ConfigSource = ConfigSource()) -> DictConfig:
    """Compose and validate every configuration that the command would run; return the first."""
    from optbench.validate import validate_config

    variants = sweep_variants(with_sweeper_params(overrides, source)) if multirun else iter([overrides])
    problems: list[str] = []
    warnings: list[str] = []
    first: DictConfig | None = None
    for variant in variants:
        try:
            cfg = compose(variant, source)
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
    _check_output_folder(first, multirun)
    if not multirun:
        _refuse_to_overwrite(first)
        _refuse_fixed_length_change(first)
    return first


def _check_output_folder(cfg: DictConfig, multirun: bool) -> None:
    """The run's (or sweep's) folder can be made, and a run resumed with trainer.resume=auto has a
    checkpoint that loads, if any: found here, before Hydra makes the folder, not when training starts."""
    from optbench.commands.common import writable_folder

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = writable_folder(key, OmegaConf.select(cfg, key))
    if not multirun and cfg.trainer.resume == "auto":
        from optbench import checkpoint

        found = checkpoint.find_resume("auto", RunFolder(folder))
        if found is not None:
            checkpoint.refuse_other_optimizer(found[0], found[1].get("config", {}), cfg)


def _refuse_to_overwrite(cfg: DictConfig) -> None:
    """A run folder has one writer, and holds one run: a folder that holds a run is continued
    (trainer.resume=auto) while it is unfinished, and a finished run's folder is never written again."""
    from optbench.folder_lock import refuse_if_held

    run_dir = Path(str(cfg.hydra.run.dir))
    refuse_if_held(run_dir)  # first: a second writer is told who writes the folder
    folder = RunFolder(run_dir)
    if not folder.holds_run():
        return
    resume = cfg.trainer.resume
    if resume is None:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: that folder already holds a run. Continue it with "
            f"trainer.resume=auto, or choose another folder; optbench never overwrites a run."
        )
    status = folder.finished()
    own = resume == "auto" or Path(str(resume)).expanduser().resolve().parent == folder.checkpoints.resolve()
    if not own:  # another run's checkpoint would be continued in this run's folder, mixing the two
        raise ConfigError(
            f"trainer.resume={resume} with hydra.run.dir={run_dir}: that folder holds {status or 'an unfinished'} "
            f"run, and the checkpoint is not its own; continue another run's checkpoint in a new folder "
            f"(another hydra.run.dir). optbench never overwrites a run.")
    if status is not None:
        _refuse_finished_run_changes(cfg, folder, status)


def _refuse_finished_run_changes(cfg: DictConfig, folder: RunFolder, status: str) -> None:
    """A finished run resumed with other settings (a longer trainer.max_steps, another LR) would be
    rewritten: refused, with the way to train it on in a new folder. The same settings: nothing to do."""
    from optbench.finished_runs import NOT_COMPARED
    from optbench.profiles import flat

    job_cfg = cfg.copy()
    with open_dict(job_cfg):
        del job_cfg["hydra"]  # Hydra's own settings (folders, launcher) are not the run's
    job = OmegaConf.to_container(job_cfg, resolve=True)
    assert isinstance(job, dict)
    ran, wanted = flat(folder.read_summary().get("config", {})), flat(job)
    changed = [f"{key}={wanted.get(key)} (the run: {ran.get(key)})" for key in sorted(set(ran) | set(wanted))
               if key not in NOT_COMPARED and ran.get(key) != wanted.get(key)]
    if changed:
        raise ConfigError(
            f"hydra.run.dir={folder.path}: that run is finished ({status}), and a finished run's folder is "
            f"never written again; this command changes {', '.join(changed[:4])}. Train on from its "
            f"checkpoint in a new folder: hydra.run.dir=NEW trainer.resume={folder.last_checkpoint}.")


def _refuse_fixed_length_change(cfg: DictConfig) -> None:
    """Refuse, before any compute, a resume with another length than the checkpoint's run where a
    scheduler keeps its length in its state.

    optbench's schedules are re-planned for a resumed run's length (`ScheduledLR.load_state_dict`).
    A torch scheduler given the run's `total_steps` (OneCycleLR) holds it in the state that a resume
    restores, and nothing outside it can re-plan it: past the old length it would stop the run.
    """
    tc = cfg.trainer
    if tc.resume is None:
        return
    from optbench.build import is_schedule, named, planned_length
    from optbench.targets import resolve

    nodes = {"scheduler": cfg.scheduler}
    if cfg.get("gan") is not None:
        nodes |= {f"gan.{net}_scheduler": cfg.gan[f"{net}_scheduler"] for net in ("g", "d")}
    # Those that build_scheduler gives the run's total_steps (those whose signature names it).
    fixed = [key for key, node in nodes.items() if not is_schedule(node) and "total_steps" not in node
             and "total_steps" in named(resolve(node._target_, key))]
    if not fixed:
        return
    from optbench import checkpoint

    found = checkpoint.find_resume(str(tc.resume), RunFolder(Path(str(cfg.hydra.run.dir))))
    if found is None:
        return
    path, state = found
    steps, saved_steps = planned_length(cfg)[0], planned_length(OmegaConf.create(state["config"]))[0]
    if steps == saved_steps:
        return
    length = f"trainer.max_steps={steps}" if tc.max_steps is not None else f"trainer.epochs={tc.epochs} ({steps} steps)"
    raise ConfigError(
        f"{length} with trainer.resume={tc.resume}: the checkpoint {path} is of a run of {saved_steps} "
        f"optimizer steps, and {fixed[0]}._target_={nodes[fixed[0]]._target_} keeps that length in its "
        f"state, so it cannot be re-planned. Resume with trainer.max_steps={saved_steps}, or train the longer "
        f"run in another folder; optbench's own schedules (configs/scheduler/, scheduler=onecycle) are "
        f"re-planned when a run is resumed with another length."
    )
