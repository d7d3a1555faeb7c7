"""`optbench list [TOPIC...]`: the options of each config group with their one-line descriptions;
`optbench list param-groups [OVERRIDES]`: every parameter's group, LR and weight decay.

The param-groups table builds the configured model and parameter groups (no data beyond the data
set's shape, no training) so that a user sees what a rule set does before spending compute on it.
"""

from __future__ import annotations

import difflib

from optbench.commands.common import Invocation, group_options, reports_bad_input
from optbench.errors import ConfigError

# `optbench list` topics -> config group folders ("recipe" is the recipes/ folder).
LIST_TOPICS = {
    "models": "model",
    "data": "data",
    "optimizers": "optimizer",
    "schedulers": "scheduler",
    "params": "params",
    "trainers": "trainer",
    "batching": "batching",
    "recipes": "recipe",
    "searches": "hparams_search",
}


def list_topic(name: str) -> str:
    """The `optbench list` topic that `name` means: a topic (`optimizers`) or its group's name
    (`optimizer`, as in optimizer=NAME); anything else is refused with the closest topic."""
    groups = {group: topic for topic, group in LIST_TOPICS.items()}
    if name in LIST_TOPICS or name in groups:
        return groups.get(name, name)
    close = difflib.get_close_matches(name, [*LIST_TOPICS, *groups, "param-groups"], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"list {name}: no such topic.{hint} Choose from: {', '.join([*LIST_TOPICS, 'param-groups'])}.")


@reports_bad_input
def list_options(args: list[str]) -> int:
    from optbench.paths import configs_dir, describe, recipes_dir

    if args[:1] == ["param-groups"]:
        return print_param_groups(args[1:])
    topics = [list_topic(t) for t in args] or list(LIST_TOPICS)
    for topic in topics:
        group = LIST_TOPICS[topic]
        folder = recipes_dir() if group == "recipe" else configs_dir() / group
        files = sorted(folder.glob("*.yaml"))
        print(f"{topic} ({group}=NAME):")
        width = max((len(f.stem) for f in files), default=0)
        for path in files:
            print(f"  {path.stem:<{width}}  {describe(path)}")
    return 0


def run_help(invocation: Invocation) -> int:
    """`optbench run --help`: Hydra's app help (its template, flags and composed config), with the
    config groups read from the folders (`group_options`) instead of Hydra's slow listing."""
    import string

    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser
    from omegaconf import OmegaConf, open_dict

    from optbench.config import compose

    cfg = compose(list(invocation.overrides), invocation.source)
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    groups = "".join(f"{group}: {', '.join(names)}\n" for group, names in group_options(invocation.source).items())
    print(string.Template(template).safe_substitute(
        FLAGS_HELP=Hydra.format_args_help(get_args_parser()),
        APP_CONFIG_GROUPS=groups,
        HYDRA_CONFIG_GROUPS="(optbench run --hydra-help lists Hydra's own groups)\n",
        CONFIG=OmegaConf.to_yaml(cfg, resolve="--resolve" in invocation.flags)))
    return 0


@reports_bad_input
def print_param_groups(overrides: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from optbench.build import arguments, build_data, build_model, build_param_groups
    from optbench.config import job_config
    from optbench.lr_scaling import planned_batch, scaled_lr

    cfg = job_config(overrides)
    model = build_model(cfg.model, build_data(cfg.data))
    weight_decay = arguments(cfg.optimizer).get("weight_decay", 0.0)
    # The group LRs a run starts with: the base LR after optimizer.lr_scaling, times each group's scale.
    groups = build_param_groups(cfg.params, model, scaled_lr(cfg.optimizer, planned_batch(cfg)).value)
    names = {p: n for n, p in model.named_parameters()}
    table = Table(title=f"{type(model).__name__}: parameter groups of params={cfg.params._target_.rsplit('.', 1)[-1]}",
                  title_justify="left")
    for column in ("parameter", "shape", "group", "lr scale", "lr", "weight decay"):
        table.add_column(column, justify="right" if column in ("lr scale", "lr", "weight decay") else "left",
                         overflow="fold")
    for group in groups:
        decay = group.get("weight_decay", weight_decay)
        for param in group["params"]:
            table.add_row(names[param], "x".join(map(str, param.shape)), group["name"], f"{group['lr_scale']:.4g}",
                          f"{group.get('lr', float('nan')):.4g}", f"{decay:g}")
    Console(width=max(100, Console().width)).print(table)
    return 0
