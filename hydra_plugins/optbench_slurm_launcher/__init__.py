"""optbench's Hydra launcher plugin for SLURM (Hydra finds plugins in the `hydra_plugins` namespace)."""
