"""The DataLoader-based image data on tiny fake files: torchvision's CIFAR format, ImageFolder
layout; what a missing or wrong data set says; and the shipped text, the same on every machine."""

from __future__ import annotations

import hashlib
import json
import pickle
import sysconfig
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from conftest import run_cli
from optbench.datasets import text
from optbench.datasets.text import chars, code_topics
from optbench.datasets.vision import cifar, imagenet
from optbench.errors import ConfigError


def test_cifar_reads_torchvision_files_with_a_seeded_order(fake_cifar):
    data = cifar("cifar10", root=str(fake_cifar), batch_size=4, num_workers=0)
    assert data.spec.input_shape == (3, 32, 32) and data.spec.num_classes == 10
    assert data.num_train == 40 and data.batches_per_epoch == 10
    x, y = next(data.train_batches(seed=0, epoch=0))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    labels = [y for _, y in data.train_batches(seed=0, epoch=0)]
    assert all(torch.equal(a, b) for a, b in zip(labels[3:], [y for _, y in data.train_batches(0, 0, start=3)]))
    assert not all(torch.equal(a, b) for a, b in zip(labels, [y for _, y in data.train_batches(0, 1)]))
    assert sum(len(y) for _, y in data.val_batches()) == 8


def test_the_training_set_in_order_is_read_without_augmentation(fake_cifar):
    """For a train accuracy (reproduce's generalisation gap): every training image once, in order,
    transformed as the validation images are."""
    data = cifar("cifar10", root=str(fake_cifar), batch_size=16, num_workers=0)
    batches = list(data.train_batches_in_order())
    assert [len(y) for _, y in batches] == [16, 16, 8]
    x = torch.cat([x for x, _ in batches])
    expected = torch.stack([data.val.transform(Image.fromarray(image)) for image in data.train.data])
    assert torch.equal(x, expected)
    assert torch.cat([y for _, y in batches]).tolist() == data.train.targets


def test_cifar_missing_or_wrong_or_offline(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="looked for .*cifar-10-batches-py.*data.download=true"):
        cifar("cifar10", root=str(tmp_path / "nowhere"))
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_text("not a pickle")
    with pytest.raises(ConfigError, match="does not hold a readable cifar10"):
        cifar("cifar10", root=str(tmp_path))

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(ConfigError, match="could not download cifar10.*Offline"):
        cifar("cifar10", root=str(tmp_path / "fresh"), download=True)


def write_image_folder(root, classes=("cat", "dog"), per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_image_folder_with_worker_processes(tmp_path):
    write_image_folder(tmp_path)
    data = imagenet(root=str(tmp_path), batch_size=2, num_workers=1, image_size=32).to(torch.device("cpu"))
    assert data.spec.num_classes == 2 and data.batches_per_epoch == 3
    batches = list(data.train_batches(seed=1, epoch=0))
    assert [x.shape for x, _ in batches] == [(2, 3, 32, 32)] * 3
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert sum(len(y) for _, y in data.val_batches()) == 6


def test_image_folder_missing_or_wrong(tmp_path):
    with pytest.raises(ConfigError, match="looked for .*train.*image-net.org"):
        imagenet(root=str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ConfigError, match="does not hold images in class folders"):
        imagenet(root=str(tmp_path))


def test_missing_data_root_exits_2_with_where_it_looked(workdir):
    result = run_cli("run", "data=cifar10", f"data.root={workdir / 'none'}", "trainer.max_steps=1", cwd=workdir)
    assert result.returncode == 2
    assert "looked for" in result.stderr and "Traceback" not in result.stderr


# The shipped text's archive and the tokens it gives: every text figure in the README follows them.
SNAPSHOT_SHA256 = "5f0997cde46c03c425a5e2c7127a75b56d4a11a0743a57968b1146c54f2faa7f"
CHARS_TOKENS = "ed3daffd043c2dca7547a2a9fbd10ab2704400bdbf9c8178e4ccfd8ba5277b2e"
CODE_TOPICS_TOKENS = "068a239ff212ffdce1ed0ba99aa1536ba4b2988cd8d8813c4861f938f5396565"


def tokens_digest(data) -> str:
    """SHA-256 of a data set's inputs and labels, one byte each (every value is below 256)."""
    tensors = (data.x_train, data.y_train, data.x_val, data.y_val)
    return hashlib.sha256(b"".join(t.to(torch.uint8).numpy().tobytes() for t in tensors)).hexdigest()


def test_text_data_are_the_pinned_tokens_whatever_the_local_python(monkeypatch, tmp_path):
    # The local standard library is not read: pointed at an empty folder, the tokens do not change.
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(tmp_path), "purelib": str(tmp_path)})
    assert tokens_digest(chars()) == CHARS_TOKENS
    assert tokens_digest(code_topics()) == CODE_TOPICS_TOKENS


def test_a_changed_text_snapshot_is_refused(monkeypatch, tmp_path):
    damaged = tmp_path / text.SNAPSHOT.name
    raw = bytearray(text.SNAPSHOT.read_bytes())
    raw[-100] ^= 1
    damaged.write_bytes(raw)
    monkeypatch.setattr(text, "SNAPSHOT", damaged)
    text.snapshot.cache_clear()
    with pytest.raises(ConfigError, match=f"has SHA-256 [0-9a-f]{{64}}, not the {SNAPSHOT_SHA256}"):
        chars()
    text.snapshot.cache_clear()  # the real archive is read again by later tests


def test_code_topics_refuses_more_snippets_than_the_snapshot_holds():
    with pytest.raises(ConfigError, match="data.per_class=4001: .* allowed: at most 4000"):
        code_topics(per_class=4001, seq_len=64)


def test_a_text_run_records_the_data_checksum_and_refuses_more_text_than_shipped(workdir):
    result = run_cli("run", "model=rnn", "model.hidden=16", "data=chars", "data.max_chars=5000", "data.seq_len=16",
                     "data.batch_size=8", "trainer.max_steps=2", "hydra.run.dir=run", "trainer.progress=false",
                     cwd=workdir)
    assert result.returncode == 0, result.stderr
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    assert summary["data"] == {"source": "optbench/datasets/python_source.tar.xz", "sha256": SNAPSHOT_SHA256}

    result = run_cli("run", "model=rnn", "data=chars", "data.max_chars=1000001", "hydra.run.dir=refused", cwd=workdir)
    assert result.returncode == 2
    assert "data.max_chars=1000001" in result.stderr and "<= 1e+06" in result.stderr
    assert "Traceback" not in result.stderr and not (workdir / "refused").exists()
