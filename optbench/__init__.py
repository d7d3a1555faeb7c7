"""optbench: an experiment runner for studying and tuning deep-learning optimizers.

Importing the package is cheap; torch is imported by the modules that need it.
"""

__version__ = "0.1.0"
