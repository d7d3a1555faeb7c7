"""The optimizers that optbench implements itself (torch.optim.Optimizer subclasses).

Each module cites its paper and the implementation it is checked against; the parity tests are in
tests/test_optim_parity.py. What the trainer asks of an optimizer (Hessian refreshes, trust ratios,
state bytes) goes through `optbench.optim.wrapping`, which reaches optimizers inside wrappers.
"""

from optbench.optim.lamb import Lamb
from optbench.optim.lars import Lars
from optbench.optim.lion import Lion
from optbench.optim.lookahead import Lookahead
from optbench.optim.muon import MuonWithAdamW
from optbench.optim.sophia import SophiaG

__all__ = ["Lamb", "Lars", "Lion", "Lookahead", "MuonWithAdamW", "SophiaG"]
