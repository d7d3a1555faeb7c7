"""A least-squares problem whose curvature is chosen: the chapter's ill-conditioned quadratic.

How it is made (all from `seed`, so every run sees the same problem):

1. eigenvalues lambda_i = condition ** (-i / (dim - 1)), i = 0 .. dim-1: from 1 down to 1/condition,
   evenly spaced on a log scale;
2. a random rotation Q (the QR factor of a Gaussian matrix), so that the steep and flat
   directions are not the coordinate axes;
3. inputs x = z diag(sqrt(lambda)) Q^T with z standard normal: their covariance is
   Q diag(lambda) Q^T;
4. a teacher w* ~ N(0, I) and targets y = x w* + noise * N(0, 1).

With the loss 1/2 (f(x) - y)^2 of a linear model f, the expected loss is a quadratic in the
weights whose Hessian is that covariance: condition number `condition`. Without noise the
minimum is 0, so the validation loss is the distance to the optimum.
"""

from __future__ import annotations

from typing import Annotated, Optional

import torch

from optbench.data import InMemoryData
from optbench.schema import NonNegativeFloat, PositiveInt, Range
from optbench.tasks import LeastSquares, declares_task

AtLeastOne = Annotated[float, Range(low=1)]


@declares_task(LeastSquares)
def least_squares(batch_size: PositiveInt = 64, dim: PositiveInt = 20, condition: AtLeastOne = 100.0,
                  train_size: PositiveInt = 1024, val_size: PositiveInt = 1024, noise: NonNegativeFloat = 0.0,
                  seed: int = 0, target: Optional[str] = "loss <= 0.001") -> InMemoryData:
    """Linear regression on inputs of covariance Q diag(lambda) Q^T (the module's procedure)."""
    generator = torch.Generator().manual_seed(seed)
    exponents = torch.arange(dim, dtype=torch.float64) / max(dim - 1, 1)
    eigenvalues = float(condition) ** -exponents
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    z = torch.randn(train_size + val_size, dim, generator=generator, dtype=torch.float64)
    x = z * eigenvalues.sqrt() @ rotation.T
    teacher = torch.randn(dim, generator=generator, dtype=torch.float64)
    y = x @ teacher + noise * torch.randn(train_size + val_size, generator=generator, dtype=torch.float64)
    x, y = x.float(), y.float()
    return InMemoryData(x[:train_size], y[:train_size], x[train_size:], y[train_size:], 1, batch_size,
                        task=LeastSquares(target))
