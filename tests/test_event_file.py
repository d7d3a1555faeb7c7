"""optbench's TensorBoard event files (optbench/event_file.py) read back by TensorBoard itself:
its checksums, its scalar events (byte for byte protobuf's), and a resumed run's purge of the
interrupted run's tail."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from optbench.event_file import EventFile, masked_crc, scalar_event


@pytest.mark.parametrize("data", [b"", b"a", b"123456789", bytes(range(256)) * 5])
def test_the_checksum_is_tensorboards(data):
    assert masked_crc(data) == masked_crc32c(data)


SCALARS = [
    {"train/loss": 0.25},
    {},  # an event with an empty summary
    {"train/loss": float("nan"), "lr/émbeddings": float("inf"), "grad_norm/pre_clip": -float("inf")},
    {"train/loss": 1e39, "val/loss": -1e39, "x": 3.4028235e38, "y": 1e-46},  # beyond float32 both ways
    {f"diag/update_ratio/{'layer' * 30}{i}": i / 7 for i in range(40)},  # lengths of two varint bytes
]


@pytest.mark.parametrize("step", [0, 1, 127, 128, 300, 2**40])
@pytest.mark.parametrize("scalars", SCALARS, ids=range(len(SCALARS)))
def test_a_scalar_event_is_the_bytes_protobuf_makes(step, scalars):
    values = [Summary.Value(tag=tag, simple_value=number) for tag, number in scalars.items()]
    expected = Event(wall_time=1764600000.123456, step=step, summary=Summary(value=values)).SerializeToString()
    assert scalar_event(1764600000.123456, step, scalars) == expected


def losses(folder):
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("train/loss")]


def test_tensorboard_reads_every_scalar_and_finds_a_changed_byte(tmp_path):
    file = EventFile(tmp_path)
    for step in range(1, 6):
        file.add_scalars({"train/loss": step / 4, "lr/group0": 0.1}, step)
    file.close()
    assert losses(tmp_path) == [(step, step / 4) for step in range(1, 6)]
    assert [e.step for e in EventFileLoader(str(file.path)).Load()] == [0, 1, 2, 3, 4, 5]  # 0: the version event
    data = bytearray(file.path.read_bytes())
    data[-10] ^= 0xFF  # inside the last record's event: its checksum no longer holds
    file.path.write_bytes(bytes(data))
    assert [e.step for e in EventFileLoader(str(file.path)).Load()] == [0, 1, 2, 3, 4]  # TensorBoard drops it


def test_a_resumed_runs_file_drops_what_the_interrupted_run_logged_after_the_checkpoint(tmp_path):
    first = EventFile(tmp_path)
    for step in range(1, 11):  # logged up to step 10, checkpointed at 6, then killed
        first.add_scalars({"train/loss": 1.0}, step)
    first.close()
    resumed = EventFile(tmp_path, purge_step=7)
    for step in range(7, 9):
        resumed.add_scalars({"train/loss": 2.0}, step)
    resumed.close()
    assert losses(tmp_path) == [(s, 1.0) for s in range(1, 7)] + [(7, 2.0), (8, 2.0)]
