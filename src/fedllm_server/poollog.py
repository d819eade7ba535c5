"""Append-only log of accepted-but-not-yet-aggregated updates.

An update is Acked only after its record is fsynced here, so ``kill -9`` at any moment loses
nothing the server accepted. The log belongs to one global version (written in its header): it
holds the updates accepted since the checkpoint of that version. After the next checkpoint is
durable the log is atomically replaced by an empty one for the new version; a log whose header
version is older than the checkpoint we resumed from is stale and ignored.

File layout: ``FLOG`` magic, u32 format, i64 base version; then records, each
``u32 length | u32 crc32(payload) | payload``. A record whose length runs past the end of the
file or whose CRC fails is a torn tail (the writer died mid-append): it and everything after it
is dropped and the file truncated to the last good record. Payload: msgpack header + raw tensor
bytes. Pure file I/O on numpy arrays; callers run it off the event loop.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes  # noqa: F401  registers bfloat16 so np.dtype("bfloat16") resolves
import msgpack
import numpy as np

from fedllm_core.files import atomic_write
from fedllm_core.tensorfile import raw_view

TensorDict = dict[str, np.ndarray]

_MAGIC = b"FLOG"
_HEADER = struct.Struct("<4sIq")
_FRAME = struct.Struct("<II")
_FORMAT = 1


@dataclass(frozen=True)
class LoggedUpdate:
    """One accepted update as the pool needs it back after a restart."""

    client_id: str
    update_id: str
    base_version: int
    round: int
    sample_count: int
    trigger: str
    accepted_at: float
    metrics: dict[str, float]
    tensors: TensorDict


@dataclass(frozen=True)
class Replay:
    version: int | None  # header version; None when there was no usable log
    records: list[LoggedUpdate]
    torn_bytes: int  # bytes dropped from a torn tail


def record_parts(rec: LoggedUpdate) -> list[bytes | memoryview]:
    """A record's payload as pieces: u32 header length, msgpack header, then each tensor's
    own bytes (views, not copies: a 100 MB update is written from where it lies)."""
    specs = [[k, str(v.dtype), list(v.shape)] for k, v in rec.tensors.items()]
    header = {
        "client_id": rec.client_id,
        "update_id": rec.update_id,
        "base_version": rec.base_version,
        "round": rec.round,
        "sample_count": rec.sample_count,
        "trigger": rec.trigger,
        "accepted_at": rec.accepted_at,
        "metrics": rec.metrics,
        "tensors": specs,
    }
    head = msgpack.packb(header)
    return [struct.pack("<I", len(head)), head, *(raw_view(v) for v in rec.tensors.values())]


def decode_record(payload: bytes | memoryview) -> LoggedUpdate:
    (head_len,) = struct.unpack_from("<I", payload)
    header: dict[str, Any] = msgpack.unpackb(payload[4 : 4 + head_len])
    offset = 4 + head_len
    tensors: TensorDict = {}
    for name, dtype_name, shape in header["tensors"]:
        dtype = np.dtype(dtype_name)
        count = int(np.prod(shape, dtype=np.int64))
        arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
        tensors[name] = arr.reshape(shape).copy()
        offset += count * dtype.itemsize
    fields = {k: v for k, v in header.items() if k != "tensors"}
    return LoggedUpdate(tensors=tensors, **fields)


def _frame_header(parts: list[bytes | memoryview]) -> bytes:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return _FRAME.pack(sum(len(part) for part in parts), crc)


def read_log(path: Path) -> Replay:
    """Every intact record of ``path``; a torn tail is measured and left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Replay(None, [], 0)
    if len(data) < _HEADER.size:
        return Replay(None, [], len(data))
    magic, fmt, version = _HEADER.unpack_from(data)
    if magic != _MAGIC or fmt != _FORMAT:
        return Replay(None, [], len(data))
    records, offset = [], _HEADER.size
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        payload = memoryview(data)[start : start + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            break
        records.append(decode_record(payload))
        offset = start + length
    return Replay(version, records, len(data) - offset)


class PoolLog:
    """The live log: append + fsync per accepted update, reset after each checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO | None = None

    def open(self, version: int) -> Replay:
        """Open for appending to ``version``'s log, returning what it already held."""
        replay = read_log(self.path)
        if replay.version != version:
            self.reset(version)
            return Replay(replay.version, [], replay.torn_bytes)
        good_length = self.path.stat().st_size - replay.torn_bytes
        self._fh = self.path.open("r+b")
        self._fh.truncate(good_length)  # drop a torn tail so new records follow good ones
        self._fh.seek(good_length)
        os.fsync(self._fh.fileno())
        return replay

    def append(self, rec: LoggedUpdate) -> int:
        """Durably append one record; return its size in bytes."""
        if self._fh is None:
            raise RuntimeError("pool log is not open")
        parts = record_parts(rec)
        head = _frame_header(parts)
        for piece in (head, *parts):
            self._fh.write(piece)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return len(head) + sum(len(part) for part in parts)

    def reset(self, version: int) -> None:
        """Atomically start an empty log for ``version`` (after its checkpoint is durable)."""
        self.close()
        atomic_write(self.path, _HEADER.pack(_MAGIC, _FORMAT, version))
        self._fh = self.path.open("r+b")
        self._fh.seek(0, os.SEEK_END)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
