"""What a workload computes from a batch: the training loss and the evaluation metrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optbench.data import Batch


class Classification:
    """Cross-entropy loss; validation loss and top-1 accuracy."""

    # Validation metrics and whether larger is better (for `best` in summary.json).
    metrics = {"loss": "min", "acc": "max"}

    def training_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-batch sums of each metric; the trainer divides by the number of samples."""
        x, y = batch
        logits = model(x)
        return {
            "loss": F.cross_entropy(logits.float(), y, reduction="sum"),
            "acc": (logits.argmax(dim=1) == y).sum(),
        }
