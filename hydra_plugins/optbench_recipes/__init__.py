"""optbench's recipes as Hydra's `recipe` group (Hydra finds plugins in the `hydra_plugins` namespace)."""
