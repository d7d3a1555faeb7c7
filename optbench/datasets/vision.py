"""Image data sets read from `data.root` through DataLoaders: CIFAR-10/100 and ImageFolder (ImageNet).

`LoaderData` presents the interface of `InMemoryData` (`spec`, `task`, `batch_size`,
`batches_per_epoch`, `train_batches(seed, epoch, start)`, `train_batches_in_order()`, `val_batches()`,
`to(device)`): the order of an epoch is a permutation seeded by (seed, epoch), cut into batches, so a
resumed run starts at any batch; the random augmentation of worker processes is seeded by (seed,
epoch) too.
Nothing is downloaded unless `data.download=true`; a missing data set says where it looked.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from optbench.data import DataSpec, count_batches, epoch_generator, shard
from optbench.errors import ConfigError
from optbench.schema import NonNegativeInt, PositiveInt
from optbench.tasks import Batch, Classification, declares_task

CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class LoaderData:
    """Train and validation `Dataset`s read in batches by DataLoader workers, moved to the device."""

    def __init__(self, train: Dataset, val: Dataset, spec: DataSpec, batch_size: int, num_workers: int,
                 target: str | None, drop_last: bool = True):
        self.train, self.val, self.spec = train, val, spec
        self.batch_size, self.num_workers, self.drop_last = batch_size, num_workers, drop_last
        self.task = Classification(target)
        self.device = torch.device("cpu")
        self.memory_format = torch.contiguous_format
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        """Read only rank `rank`'s share of every batch (`data.batch_size` stays the global batch)."""
        self.rank, self.world_size = rank, world_size

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format) -> LoaderData:
        """Batches go to `device` as they are read (the data sets stay on disk)."""
        self.device, self.memory_format = device, memory_format
        return self

    @property
    def num_train(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    @property
    def batches_per_epoch(self) -> int:
        # Large-batch recipes drop the short last batch (it would be one odd optimizer step).
        return count_batches(self.num_train, self.batch_size, self.drop_last, self.world_size)

    def train_batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Batch]:
        generator = epoch_generator(seed, epoch)
        order = torch.randperm(self.num_train, generator=generator)
        batches = [shard(order[i * self.batch_size : (i + 1) * self.batch_size], self.rank, self.world_size).tolist()
                   for i in range(start, self.batches_per_epoch)]
        yield from self._read(self.train, batches, generator)

    def train_batches_in_order(self) -> Iterator[Batch]:
        """The whole training set in order, read as the validation set is (its transform: no
        augmentation), for the accuracy of a model on the data it was trained on."""
        plain = copy.copy(self.train)  # shares the images, not the transform
        plain.transform = self.val.transform  # type: ignore[attr-defined]
        indices = list(range(self.num_train))
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        yield from self._read(plain, batches, torch.Generator().manual_seed(0))

    def val_batches(self) -> Iterator[Batch]:
        indices = list(range(len(self.val)))  # type: ignore[arg-type]
        batches = [indices[i + self.rank : i + self.batch_size : self.world_size]
                   for i in range(0, len(indices), self.batch_size)]
        yield from self._read(self.val, batches, torch.Generator().manual_seed(0))

    def _read(self, dataset: Dataset, batches: list[list[int]], generator: torch.Generator) -> Iterator[Batch]:
        pin = self.device.type == "cuda"
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=self.num_workers, pin_memory=pin,
                            generator=generator, persistent_workers=False)
        for x, y in loader:
            x = x.to(self.device, non_blocking=pin).contiguous(memory_format=self.memory_format)
            yield x, y.to(self.device, non_blocking=pin)


def _transforms(train: bool, crop: int, mean_std: tuple, imagenet: bool):  # -> torchvision transform
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(*mean_std)]
    if imagenet:
        if train:
            return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), *normalize])
        return T.Compose([T.Resize(round(crop * 256 / 224)), T.CenterCrop(crop), *normalize])
    if train:  # the standard CIFAR augmentation: 4-pixel padded random crops and flips
        return T.Compose([T.RandomCrop(crop, padding=4), T.RandomHorizontalFlip(), *normalize])
    return T.Compose(normalize)


CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", "CIFAR10", "cifar-10-python.tar.gz"),
               "cifar100": ("cifar-100-python", "CIFAR100", "cifar-100-python.tar.gz")}


@declares_task(Classification)
def cifar(name: Literal["cifar10", "cifar100"] = "cifar10", root: str = "~/data", download: bool = False,
          batch_size: PositiveInt = 128, num_workers: NonNegativeInt = 2,
          target: Optional[str] = "acc >= 0.93") -> LoaderData:
    """CIFAR-10 or CIFAR-100 (torchvision's reader) from `root`, with the standard augmentation."""
    import torchvision

    folder, cls, archive = CIFAR_FILES[name]
    path = Path(root).expanduser()
    if download:
        try:
            getattr(torchvision.datasets, cls)(str(path), train=True, download=True)
        except Exception as e:  # URLError offline, HTTP errors, a bad archive
            raise ConfigError(f"data.download=true: could not download {name} into {path} ({e}). Offline? "
                              f"Copy {archive} from https://www.cs.toronto.edu/~kriz/cifar.html into {path} "
                              f"and unpack it there (it holds {folder}/).") from None
    if not (path / folder).is_dir():
        raise ConfigError(f"data.root={root}: no {name} there (looked for {path / folder}/). Get it with "
                          f"data.download=true, or unpack {archive} from https://www.cs.toronto.edu/~kriz/cifar.html "
                          f"into {path}.")
    mean_std = CIFAR_MEAN_STD[name]
    try:
        reader = getattr(torchvision.datasets, cls)
        train = reader(str(path), train=True, transform=_transforms(True, 32, mean_std, False))
        val = reader(str(path), train=False, transform=_transforms(False, 32, mean_std, False))
    except Exception as e:  # torchvision's integrity check, or files that are not CIFAR's pickles
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(f"data.root={root}: {path / folder} does not hold a readable {name} ({reason}). "
                          f"Unpack {archive} there again, or use data.download=true.") from None
    classes = len(train.classes)
    return LoaderData(train, val, DataSpec((3, 32, 32), classes, "images"), batch_size, num_workers, target)


@declares_task(Classification)
def imagenet(root: str = "~/data/imagenet", batch_size: PositiveInt = 256, num_workers: NonNegativeInt = 8,
             image_size: PositiveInt = 224, target: Optional[str] = "acc >= 0.75") -> LoaderData:
    """ImageNet (or any data in its layout) as ImageFolders: `root/train/<class>/*.JPEG` and
    `root/val/<class>/*.JPEG`; random-resized crops and flips for training, resize and centre crop
    for validation."""
    from torchvision.datasets import ImageFolder

    path = Path(root).expanduser()
    missing = [str(path / s) for s in ("train", "val") if not (path / s).is_dir()]
    if missing:
        raise ConfigError(f"data.root={root}: looked for {' and '.join(missing)}, not found. ImageNet cannot be "
                          f"downloaded automatically: get ILSVRC2012 from https://image-net.org, put the training "
                          f"images in {path}/train/<class>/ and the validation images in {path}/val/<class>/ "
                          f"(one folder per class, as torchvision's ImageFolder reads).")
    sets = {}
    for split in ("train", "val"):
        try:
            transform = _transforms(split == "train", image_size, IMAGENET_MEAN_STD, True)
            sets[split] = ImageFolder(str(path / split), transform)
        except (FileNotFoundError, RuntimeError) as e:  # no class folders, or no images in them
            raise ConfigError(f"data.root={root}: {path / split} does not hold images in class folders "
                              f"({' '.join(str(e).split())[:200]}).") from None
    if sets["train"].classes != sets["val"].classes:
        raise ConfigError(f"data.root={root}: train/ and val/ have different class folders "
                          f"({len(sets['train'].classes)} and {len(sets['val'].classes)}).")
    spec = DataSpec((3, image_size, image_size), len(sets["train"].classes), "images")
    return LoaderData(sets["train"], sets["val"], spec, batch_size, num_workers, target)
