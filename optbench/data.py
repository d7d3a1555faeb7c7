"""Data sets small enough to live on the device as tensors, and the batches the trainer reads.

Keeping a small data set on the device and slicing it by a per-epoch permutation is how the fast
CIFAR trainers avoid DataLoader workers; it also makes the data order a pure function of
(seed, epoch), so a resumed run can continue from any batch exactly.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from pathlib import Path

from typing import Literal, Optional

import torch

from optbench.errors import ConfigError
from optbench.schema import PositiveInt, UnitInterval
from optbench.tasks import Batch, Classification, Task, declares_task

__all__ = ["Batch", "DataSpec", "InMemoryData", "digits", "synthetic"]

Inputs = Literal["images", "vectors", "tokens"]


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about the data: one sample's shape, the number of classes, the
    kind of input (so that a model can refuse data it cannot read) and, for tokens, the vocabulary."""

    input_shape: tuple[int, ...]
    num_classes: int
    inputs: Inputs = "vectors"
    vocab_size: Optional[int] = None
    per_token: bool = False  # a label per position (language models), not per sample


def input_kind(x: torch.Tensor) -> Inputs:
    """Integer tensors are token ids; float (C, H, W) samples are images; anything else vectors."""
    if not x.is_floating_point():
        return "tokens"
    return "images" if x.ndim == 4 else "vectors"


def count_batches(num_train: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Batches in an epoch; `drop_last` drops the short last one, and so does `shard` when it has
    fewer samples than there are ranks."""
    full, rest = divmod(num_train, batch_size)
    return full + int(not drop_last and rest >= world_size)


def shard(index: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s part of a global batch's sample indices: every `world_size`-th one, as
    DistributedSampler deals them. A batch that the world size does not divide (an epoch's short
    last one) loses its last few samples, so that every rank steps on as many samples as the others
    and their mean gradients average to the batch's."""
    if world_size == 1:
        return index
    usable = len(index) - len(index) % world_size
    return index[rank:usable:world_size]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch `epoch`'s order: a pure function of (seed, epoch), so a resumed run
    draws the same order whatever else consumed random numbers."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class InMemoryData:
    """Train and validation tensors with batch iteration; `to(device)` moves them once."""

    def __init__(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        num_classes: int,
        batch_size: int,
        drop_last: bool = False,
        task: Task | None = None,
        vocab_size: int | None = None,
    ):
        self.x_train, self.y_train, self.x_val, self.y_val = x_train, y_train, x_val, y_val
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.task = task or Classification()
        self.rank, self.world_size = 0, 1
        self.spec = DataSpec(tuple(x_train.shape[1:]), num_classes, input_kind(x_train), vocab_size,
                             per_token=y_train.ndim > 1)

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> InMemoryData:
        """Move the tensors to `device` once; image batches in `memory_format` (channels-last)."""
        for name in ("x_train", "x_val"):
            x = getattr(self, name).to(device)
            setattr(self, name, x.contiguous(memory_format=memory_format) if x.ndim == 4 else x)
        self.y_train, self.y_val = self.y_train.to(device), self.y_val.to(device)
        return self

    def shard(self, rank: int, world_size: int) -> None:
        """Read only rank `rank`'s share of every batch (`data.batch_size` stays the global batch)."""
        self.rank, self.world_size = rank, world_size
        self.__dict__.pop("batches_per_epoch", None)  # counted again for the shares

    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @cached_property  # read after every step (is the epoch over?): counted once
    def batches_per_epoch(self) -> int:
        """Training (micro-)batches in one epoch."""
        return count_batches(self.num_train, self.batch_size, self.drop_last, self.world_size)

    def train_batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Epoch `epoch`'s shuffled batches (this rank's share of each), from batch number `start` on."""
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(self.num_train, generator=generator).to(self.x_train.device)
        for i in range(start, self.batches_per_epoch):
            index = shard(order[i * self.batch_size : (i + 1) * self.batch_size], self.rank, self.world_size)
            yield self.x_train[index], self.y_train[index]

    def train_batches_in_order(self) -> Iterator[Batch]:
        """The whole training set in order, in batches (for the accuracy of a model on the data it
        was trained on: a generalisation gap)."""
        for i in range(0, self.num_train, self.batch_size):
            yield self.x_train[i : i + self.batch_size], self.y_train[i : i + self.batch_size]

    def val_batches(self) -> Iterator[Batch]:
        """The validation set in batches; with ranks, each reads every `world_size`-th sample of
        each batch (the trainer adds up the ranks' metric sums)."""
        step = self.world_size
        for i in range(0, len(self.y_val), self.batch_size):
            part = slice(i + self.rank, i + self.batch_size, step)
            yield self.x_val[part], self.y_val[part]


def split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded random train/validation split."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Zero mean and unit variance over all pixels, with the training split's statistics only.

    One scalar for all pixels, as image normalisation does: per-pixel statistics would blow up
    the border pixels that are always blank in the training split.
    """
    mean, std = train.mean(), train.std()
    return [(t - mean) / std for t in (train, *others)]


def bundled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: images (1797, 1, 8, 8), float32 pixel values 0..16, and int64 labels.

    Read from the file that `sklearn.datasets.load_digits` reads (the same values, in the same
    order), without importing scikit-learn: that import (scipy with it) took more than a second,
    most of what the default run spent beyond importing torch.
    """
    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    folders = spec.submodule_search_locations if spec is not None else None
    path = Path(folders[0], "datasets", "data", "digits.csv.gz") if folders else None
    if path is None or not path.is_file():
        raise ConfigError("data=digits: scikit-learn's digits file (sklearn/datasets/data/digits.csv.gz) is not "
                          "installed; install scikit-learn (pip install scikit-learn), which bundles it.")
    with gzip.open(path, "rt") as f:
        rows = torch.from_numpy(np.loadtxt(f, delimiter=","))
    return rows[:, :-1].float().reshape(-1, 1, 8, 8), rows[:, -1].long()


@declares_task(Classification)
def digits(batch_size: PositiveInt = 128, val_fraction: UnitInterval = 0.2, split_seed: int = 0,
           target: Optional[str] = "acc >= 0.97") -> InMemoryData:
    """The UCI handwritten digits bundled with scikit-learn: 1,797 8x8 grey images, 10 classes.

    No download: the data ship inside scikit-learn. The held-out split (20% by default, the
    same for every run unless `split_seed` changes) is the validation/test set.
    """
    x, y = bundled_digits()
    train, val = split(len(y), val_fraction, split_seed)
    x_train, x_val = standardize(x[train], x[val])
    return InMemoryData(x_train, y[train], x_val, y[val], 10, batch_size, task=Classification(target))


@declares_task(Classification)
def synthetic(
    batch_size: PositiveInt = 128,
    input_shape: tuple[PositiveInt, ...] = (3, 32, 32),
    num_classes: PositiveInt = 10,
    train_size: PositiveInt = 2048,
    val_size: PositiveInt = 512,
    seed: int = 0,
    target: Optional[str] = None,
) -> InMemoryData:
    """Gaussian inputs of any shape, labelled by a fixed random linear teacher (so it is learnable).

    For throughput measurements and tests; accuracy on it means only that learning happens.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(input_shape)
    x = torch.randn(train_size + val_size, *shape, generator=generator)
    teacher = torch.randn(math.prod(shape), num_classes, generator=generator)
    y = (x.flatten(1) @ teacher).argmax(dim=1)
    return InMemoryData(x[:train_size], y[:train_size], x[train_size:], y[train_size:], num_classes, batch_size,
                        task=Classification(target))


def batch_groups(data: InMemoryData, seed: int, epoch: int, start: int,
                 size: int) -> Iterator[tuple[list[Batch], int]]:
    """The micro-batches of one epoch from micro-batch `start` on, `size` at a time (one optimizer
    update each), with the position after each group; a last, incomplete group still steps."""
    batches = data.train_batches(seed, epoch, start=start)
    end = data.batches_per_epoch
    for position in range(start, end, size):
        yield list(islice(batches, size)), min(position + size, end)
