"""TensorBoard event files, written by optbench in the thread that trains.

torch's SummaryWriter hands each event to a writer thread, which checksums it with TensorBoard's
CRC-32C written in Python (about 40 us an event here) while holding the interpreter lock that the
training loop needs. An event file is a sequence of records (length, its checksum, the serialized
`Event`, its checksum; TFRecord framing), so optbench writes them itself, checksummed by
google-crc32c (hardware CRC instructions), to a buffered file that `MetricsLog` flushes with its
other files: a train line costs a few microseconds and a write that fails (a full disk) raises in
the training thread, where MetricsLog names the file.

The scalars of a train line are encoded here too (`scalar_event`), rather than built as protobuf
objects and serialized: TensorBoard's part of a train line took 145 us (median, digits MLP) that
way and 80-94 us this way, of a line's 400-500 us. Their encoding is three nested messages of fixed
fields, the same bytes as protobuf's (tests/test_event_file.py compares them).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c

FILE_VERSION = "brain.Event:2"  # the first event of every event file says which format it is
_numbers = itertools.count()  # event files of one process and second get distinct names, as TensorBoard's do


def masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C rotated right by 15 bits plus a constant (the format's mask)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One record of an event file holding `data` (a serialized Event)."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


def _varint(number: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative number."""
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _field(key: int, payload: bytes) -> bytes:
    """A length-delimited field: its key byte (field number << 3 | wire type 2), length, payload."""
    return bytes((key,)) + _varint(len(payload)) + payload


def _float32(number: float) -> bytes:
    """`number` as a little-endian float32, as protobuf stores a `float` field: a finite number
    beyond float32's range becomes an infinity (struct refuses it; a diverging loss gets there)."""
    try:
        return struct.pack("<f", number)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, number))


@functools.cache  # a run logs the same few tags at every line
def _value_start(tag: str) -> bytes:
    """A `Value(tag, simple_value)` field up to its float: the value's key and length (the tag's
    field plus 5 bytes of simple_value), the tag's field, simple_value's key."""
    tag_field = _field(0x0A, tag.encode())
    return b"\x0a" + _varint(len(tag_field) + 5) + tag_field + b"\x15"


def scalar_event(wall_time: float, step: int, scalars: dict[str, float]) -> bytes:
    """The serialized `Event(wall_time, step, summary=Summary(value=[Value(tag, simple_value)...]))`
    of TensorBoard's event.proto and summary.proto: wall_time is field 1 (double), step 2 (varint),
    summary 5; a Summary's values are field 1; a value's tag is field 1, simple_value 2 (float)."""
    values = b"".join(_value_start(tag) + _float32(number) for tag, number in scalars.items())
    return b"\x09" + struct.pack("<d", wall_time) + (b"\x10" + _varint(step) if step else b"") + _field(0x2A, values)


def write_events(file: BinaryIO, events: list[Any]) -> None:
    """`events` (tensorboard Event protos) as records; a file's first names its FILE_VERSION."""
    file.write(b"".join(record(event.SerializeToString()) for event in events))


class EventFile:
    """An event file of its own in `folder`, as TensorBoard names them; `purge_step`: a resumed run's
    step, after which TensorBoard drops the earlier files' events (the interrupted run's tail)."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                              f"{os.getpid()}.{next(_numbers)}")
        self._file = self.path.open("ab")
        first = [Event(wall_time=time.time(), file_version=FILE_VERSION)]
        if purge_step is not None:
            first.append(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self._write(first)

    def add_scalars(self, scalars: dict[str, float], step: int) -> None:
        """One event of `scalars` (tag: value) at `step`."""
        self._file.write(record(scalar_event(time.time(), step, scalars)))

    def flush(self) -> None:
        """To disk, so that TensorBoard shows the curve as it grows (MetricsLog says when)."""
        self._file.flush()

    def _write(self, events: list[Any]) -> None:
        write_events(self._file, events)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
