"""`python -m optbench ...` is the same as the `optbench` console script (torchrun uses this form)."""

import sys

from optbench.cli import main

sys.exit(main())
