"""TensorBoard event files, written by optbench in the thread that trains.

torch's SummaryWriter hands each event to a writer thread, which checksums it with TensorBoard's
CRC-32C written in Python (about 40 us an event here) while holding the interpreter lock that the
training loop needs. An event file is a sequence of records (length, its checksum, the serialized
`Event`, its checksum; TFRecord framing), so optbench writes them itself, checksummed by
google-crc32c (hardware CRC instructions), to a buffered file flushed at each write: a train line
costs a few microseconds and a write that fails (a full disk) raises where it happens.
"""

from __future__ import annotations

import itertools
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

    def add_summary(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._write([Event(wall_time=time.time(), step=step, summary=summary)])

    def _write(self, events: list[Any]) -> None:
        write_events(self._file, events)
        self._file.flush()  # TensorBoard shows the curve as it grows; a killed run keeps what it logged

    def close(self) -> None:
        self._file.close()
