"""Token-sequence data that need no download.

Text: a snapshot of Python source shipped with optbench (`python_source.tar.xz`, 382 KB), so that
every machine reads the same bytes: CPython 3.11.7's standard library (PSF licence, which allows
copies that keep its notice: the archive holds its LICENSE.txt). It holds the first 1,000,000
bytes of the top-level modules (`*.py`, in name order) and, for `code_topics`, the first 256,000
bytes of each package in `PACKAGES` (its `**/*.py` but tests, in name order), the last file of each
cut at that length (tar members with mtime 0, compressed with xz -9e). The archive's SHA-256 is checked at load and recorded in every run's
summary.json (`data`). Tokens are bytes (0-255) plus a [MASK] token (256) for masked-LM
pre-training, one vocabulary for every text task so that a pre-trained body fits every fine-tuning
task.

`counting` is a generated language with a known structure: noise tokens with a few marker tokens
mixed in; the label is the marker that occurs most often (never a tie), so a perfect classifier
exists and it must count across the whole sequence.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import typing
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Optional

import torch

from optbench.data import InMemoryData, split
from optbench.errors import ConfigError
from optbench.schema import PositiveInt, Range, UnitInterval
from optbench.tasks import IGNORE, Batch, Classification, TokenPrediction, declares_task

MASK = 256
VOCAB = 257

SNAPSHOT = Path(__file__).with_name("python_source.tar.xz")
SNAPSHOT_SHA256 = "5f0997cde46c03c425a5e2c7127a75b56d4a11a0743a57968b1146c54f2faa7f"
TOP_LEVEL_BYTES = 1_000_000  # of the top-level modules in the snapshot
PACKAGE_BYTES = 256_000  # of each package in the snapshot
TextLength = Annotated[int, Range(low=1, high=TOP_LEVEL_BYTES)]
Package = Literal["asyncio", "email", "multiprocessing", "xml"]  # the packages in the snapshot
PACKAGES: tuple[str, ...] = typing.get_args(Package)


@lru_cache(maxsize=1)
def snapshot() -> dict[str, bytes]:
    """The snapshot's `.py` files, path in the standard library -> bytes, in the archive's order
    (name order), after checking the archive against its pinned SHA-256."""
    raw = SNAPSHOT.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SNAPSHOT_SHA256:
        raise ConfigError(f"data: {SNAPSHOT} has SHA-256 {digest}, not the {SNAPSHOT_SHA256} that optbench "
                          f"ships: the text would differ from everyone else's. Reinstall optbench.")
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:xz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".py")}


def origin() -> dict[str, str]:
    """What summary.json records of the text (`data`): where it comes from and its checksum."""
    return {"source": f"optbench/datasets/{SNAPSHOT.name}", "sha256": SNAPSHOT_SHA256}


def text_of(folder: str | None, max_chars: int) -> bytes:
    """The snapshot's files in `folder` (None: the top-level modules), concatenated, up to `max_chars`."""
    prefix = "" if folder is None else f"{folder}/"
    names = [n for n in snapshot() if n.startswith(prefix) and (folder is not None or "/" not in n)]
    return b"".join(snapshot()[n] for n in names)[:max_chars]


def tokens_of(text: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def unigram_loss(labels: torch.Tensor) -> float:
    """Cross-entropy (nats) of always predicting the label frequencies: the baseline to beat."""
    labels = labels[labels != IGNORE]
    p = torch.bincount(labels).double() / len(labels)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


@declares_task(TokenPrediction)
def chars(batch_size: PositiveInt = 64, seq_len: PositiveInt = 128, max_chars: TextLength = TOP_LEVEL_BYTES,
          val_fraction: UnitInterval = 0.1, target: Optional[str] = "bits <= 2.5") -> InMemoryData:
    """Character-level language modelling: predict each next byte of the snapshot's top-level modules.

    Non-overlapping windows of `seq_len`; the last `val_fraction` of the text is the validation set.
    """
    tokens = tokens_of(text_of(None, max_chars))
    n = (len(tokens) - 1) // seq_len
    x = tokens[: n * seq_len].view(n, seq_len)
    y = tokens[1 : n * seq_len + 1].view(n, seq_len)
    n_val = max(1, round(n * val_fraction))
    data = InMemoryData(x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], VOCAB, batch_size,
                        task=TokenPrediction(target), vocab_size=VOCAB)
    data.origin = origin()
    return data


def mask_tokens(x: torch.Tensor, generator: torch.Generator, mask_prob: float) -> Batch:
    """BERT's masking: `mask_prob` of positions are predicted; of those 80% become [MASK], 10% a
    random byte and 10% stay. Returns (inputs, labels) with labels IGNORE where not predicted."""
    draw = torch.rand(x.shape, generator=generator, device=x.device)
    chosen = draw < mask_prob
    labels = torch.where(chosen, x, IGNORE)
    masked = torch.where(draw < mask_prob * 0.8, MASK, x)
    random_bytes = torch.randint(0, 256, x.shape, generator=generator, device=x.device)
    inputs = torch.where((draw >= mask_prob * 0.8) & (draw < mask_prob * 0.9), random_bytes, masked)
    return inputs, labels


class MaskedText(InMemoryData):
    """Text windows masked afresh for every batch, by a generator seeded from (seed, epoch, batch)
    and the rank: the masks, like the order, are a pure function of those, so a resumed run sees the
    same ones, and the ranks of a data-parallel run draw independent masks for their shares."""

    mask_prob: float = 0.15

    def train_batches(self, seed: int, epoch: int, start: int = 0) -> Iterator[Batch]:
        for i, (x, _) in enumerate(super().train_batches(seed, epoch, start), start):
            batch_seed = (seed * 100_003 + epoch) * 1_000_003 + i
            generator = torch.Generator(x.device).manual_seed(batch_seed + self.rank * 2**40)
            yield mask_tokens(x, generator, self.mask_prob)


@declares_task(TokenPrediction)
def masked_chars(batch_size: PositiveInt = 64, seq_len: PositiveInt = 64, max_chars: TextLength = TOP_LEVEL_BYTES,
                 val_fraction: UnitInterval = 0.1, mask_prob: UnitInterval = 0.15,
                 target: Optional[str] = "bits <= 2.0") -> InMemoryData:
    """Masked-language-model pre-training on the snapshot's top-level modules (fixed masks for validation)."""
    tokens = tokens_of(text_of(None, max_chars))
    n = len(tokens) // seq_len
    windows = tokens[: n * seq_len].view(n, seq_len)
    n_val = max(1, round(n * val_fraction))
    x_val, y_val = mask_tokens(windows[-n_val:], torch.Generator().manual_seed(0), mask_prob)
    data = MaskedText(windows[:-n_val], windows[:-n_val], x_val, y_val, VOCAB, batch_size,
                      task=TokenPrediction(target), vocab_size=VOCAB)
    data.mask_prob, data.origin = mask_prob, origin()
    return data


@declares_task(Classification)
def code_topics(batch_size: PositiveInt = 32, seq_len: PositiveInt = 64,
                packages: tuple[Package, ...] = PACKAGES,
                per_class: PositiveInt = 2000, val_fraction: UnitInterval = 0.2, split_seed: int = 0,
                target: Optional[str] = "acc >= 0.9") -> InMemoryData:
    """Sequence classification: which stdlib package (`packages`) a `seq_len`-byte snippet comes
    from; `per_class` random non-overlapping snippets of each, a seeded held-out split."""
    available = PACKAGE_BYTES // seq_len
    if per_class > available:
        raise ConfigError(f"data.per_class={per_class}: the snapshot holds {PACKAGE_BYTES:,} bytes of each package, "
                          f"{available} snippets of data.seq_len={seq_len}; allowed: at most {available}.")
    xs, ys = [], []
    generator = torch.Generator().manual_seed(split_seed)
    for label, name in enumerate(packages):
        tokens = tokens_of(text_of(name, PACKAGE_BYTES))
        windows = tokens[: len(tokens) // seq_len * seq_len].view(-1, seq_len)
        windows = windows[torch.randperm(len(windows), generator=generator)[:per_class]]
        xs.append(windows)
        ys.append(torch.full((len(windows),), label))
    x, y = torch.cat(xs), torch.cat(ys)
    train, val = split(len(y), val_fraction, split_seed)
    data = InMemoryData(x[train], y[train], x[val], y[val], len(packages), batch_size,
                        task=Classification(target), vocab_size=VOCAB)
    data.origin = origin()
    return data


@declares_task(Classification)
def counting(batch_size: PositiveInt = 64, seq_len: PositiveInt = 64, num_classes: PositiveInt = 4,
             noise_tokens: PositiveInt = 16, max_count: PositiveInt = 4, train_size: PositiveInt = 8192,
             val_size: PositiveInt = 1024, seed: int = 0, target: Optional[str] = "acc >= 0.95") -> InMemoryData:
    """The generated counting language: tokens 0..num_classes-1 are markers, the next
    `noise_tokens` are noise. Each marker occurs 0..max_count times, the label's one more time than
    any other, at random positions; label = the most frequent marker."""
    if num_classes * (max_count + 1) > seq_len:
        raise ConfigError(f"data.seq_len={seq_len}: too short for {num_classes} markers of up to "
                          f"{max_count + 1} occurrences each.")
    generator = torch.Generator().manual_seed(seed)
    n = train_size + val_size
    x = torch.randint(num_classes, num_classes + noise_tokens, (n, seq_len), generator=generator)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    counts = torch.randint(0, max_count + 1, (n, num_classes), generator=generator)
    counts[torch.arange(n), y] = counts.max(dim=1).values + 1  # the label's marker wins outright
    # Slot j of a sample's random order of positions holds marker c when cum[c-1] <= j < cum[c].
    positions = torch.rand(n, seq_len, generator=generator).argsort(dim=1)
    slot_class = (torch.arange(seq_len)[None, :, None] >= counts.cumsum(dim=1)[:, None, :]).sum(dim=2)
    x.scatter_(1, positions, torch.where(slot_class < num_classes, slot_class, x.gather(1, positions)))
    return InMemoryData(x[:train_size], y[:train_size], x[train_size:], y[train_size:], num_classes, batch_size,
                        task=Classification(target), vocab_size=num_classes + noise_tokens)


