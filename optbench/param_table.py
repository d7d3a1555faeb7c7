"""`optbench list param-groups [OVERRIDES]`: every parameter's group, LR and weight decay.

Builds the configured model and parameter groups (no data beyond the data set's shape, no
training) so that a user sees what a rule set does before spending compute on it.
"""

from __future__ import annotations

from optbench.commands.common import reports_bad_input


@reports_bad_input
def print_param_groups(overrides: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from optbench.build import arguments, base_lr, build_data, build_model, build_param_groups
    from optbench.config import job_config, register_recipes

    register_recipes()
    cfg = job_config(overrides)
    model = build_model(cfg.model, build_data(cfg.data))
    weight_decay = arguments(cfg.optimizer).get("weight_decay", 0.0)
    groups = build_param_groups(cfg.params, model, base_lr(cfg.optimizer))
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
