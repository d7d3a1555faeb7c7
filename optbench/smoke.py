"""`smoke=true`: run a recipe at smoke scale with one override.

A recipe lists what makes it tiny in `smoke_overrides` (a small model and data, a few steps). They
are ordinary overrides, added to the command line before the user's own, so a user's override of
the same key wins; a group choice there (`data=synthetic`) swaps the whole group, as on the
command line.
"""

from __future__ import annotations

from optbench.errors import ConfigError

SMOKE = "smoke=true"


def key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def expand(overrides: list[str]) -> list[str]:
    """`overrides` with the configured recipe's smoke overrides added when `smoke=true` is among them."""
    if SMOKE not in overrides:
        return overrides
    from optbench.config import compose, sweep_variants

    # One configuration of a sweep (`-m ... trainer.seed=0,1`) names the recipe, and so its smoke overrides.
    extra = [str(o) for o in compose(next(sweep_variants(overrides))).get("smoke_overrides") or []]
    if not extra:
        raise ConfigError("smoke=true: this configuration lists no smoke_overrides; recipes do (recipe=NAME).")
    own = {key(o) for o in overrides}
    return [*(o for o in extra if key(o) not in own), *overrides]
