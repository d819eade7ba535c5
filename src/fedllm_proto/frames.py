"""Frame layer: the fixed 16-byte header, frame types, flags and zstd with a bomb guard.

Rules (docs/protocol.md, "Framing"): every frame is ``header || payload``; all integers are
big-endian (network order); the header is validated completely (magic, flags, declared sizes
against ``Limits``) before a single payload byte is buffered or allocated. No I/O here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import zstandard

from fedllm_proto.errors import ErrorCode, remote
from fedllm_proto.limits import Limits

MAGIC = b"FEDL"
HEADER = struct.Struct(">4sBBHII")  # magic, version, type, flags, payload length, raw length
HEADER_SIZE = HEADER.size  # 16
ZSTD_LEVEL = 1  # ~600 MB/s on the target VMs; higher levels buy little on msgpack payloads
_TLS_RECORD_START = (0x16, 0x03)  # a TLS ClientHello arriving at a plain-TCP listener


class FrameType(IntEnum):
    """Frame type numbers; 1-15 are messages, 32 is a body chunk (docs/protocol.md table)."""

    HELLO = 1
    WELCOME = 2
    GLOBAL_MODEL = 3
    TRAIN_REQUEST = 4
    UPDATE = 5
    ACK = 6
    REJECT = 7
    HEARTBEAT = 8
    ERROR = 9
    BYE = 10
    TUNING = 11
    CHUNK = 32


class Flags(IntFlag):
    NONE = 0
    COMPRESSED = 0x0001  # payload is one zstd frame; raw_length is its decompressed size
    LOSSY = 0x0002  # tensor message whose encoding does not round-trip exactly


# Payloads these carry stay far below any compression threshold, so a compressed one is only
# ever an attempt to make the receiver decompress (a bomb, or CPU): refused at the header.
NEVER_COMPRESSED = frozenset({FrameType.HEARTBEAT, FrameType.ACK, FrameType.TRAIN_REQUEST})
# Small messages capped by Limits.max_control_bytes instead of max_frame_bytes.
CONTROL_TYPES = NEVER_COMPRESSED | {
    FrameType.REJECT,
    FrameType.ERROR,
    FrameType.BYE,
    FrameType.TUNING,
}
KNOWN_FLAGS = Flags.COMPRESSED | Flags.LOSSY
# As a plain int: on 3.11 `~KNOWN_FLAGS` is the complement *within the members* (Flags(0)),
# so `flags & ~KNOWN_FLAGS` would be 0 for every reserved bit.
_RESERVED_BITS = 0xFFFF & ~int(KNOWN_FLAGS)


@dataclass(frozen=True, slots=True)
class FrameHeader:
    version: int
    type: FrameType
    flags: Flags
    length: int  # payload bytes on the wire after the header
    raw_length: int  # decompressed payload size when COMPRESSED, else 0

    @property
    def compressed(self) -> bool:
        return bool(self.flags & Flags.COMPRESSED)


def pack_header(
    version: int, ftype: FrameType, flags: Flags, length: int, raw_length: int = 0
) -> bytes:
    return HEADER.pack(MAGIC, version, ftype, flags, length, raw_length)


def parse_header(data: bytes | bytearray | memoryview, limits: Limits) -> FrameHeader:
    """Validate a complete 16-byte header; raises RemoteProtocolError before any allocation."""
    magic, version, ftype, flags, length, raw_length = HEADER.unpack(data)
    if magic != MAGIC:
        raise remote(ErrorCode.BAD_FRAME, _bad_magic_reason(bytes(magic)))
    if flags & _RESERVED_BITS:
        raise remote(ErrorCode.BAD_FRAME, f"reserved flag bits set: {flags:#06x}")
    try:
        frame_type = FrameType(ftype)
    except ValueError:
        raise remote(ErrorCode.BAD_FRAME, f"unknown frame type {ftype}") from None
    header = FrameHeader(version, frame_type, Flags(flags), length, raw_length)
    _check_sizes(header, limits)
    return header


def _bad_magic_reason(magic: bytes) -> str:
    if tuple(magic[:2]) == _TLS_RECORD_START:
        return "bad magic: peer is speaking TLS to a plain-TCP endpoint"
    return f"bad magic {magic!r}"


def _check_sizes(frame: FrameHeader, limits: Limits) -> None:
    wire_cap, raw_cap = limits.max_frame_bytes, limits.max_decompressed_bytes
    if frame.type in CONTROL_TYPES:
        wire_cap, raw_cap = min(wire_cap, limits.max_control_bytes), limits.max_control_bytes
    check_size(frame, wire_cap, min(raw_cap, limits.max_decompressed_bytes))


def check_size(frame: FrameHeader, wire_cap: int, raw_cap: int) -> None:
    """`length` within `wire_cap`; `raw_length` within `raw_cap`, and set only if compressed."""
    name = frame.type.name
    if frame.length > wire_cap:
        raise remote(ErrorCode.FRAME_TOO_LARGE, f"{name} frame of {frame.length} B > {wire_cap}")
    if not frame.compressed:
        if frame.raw_length:
            raise remote(ErrorCode.BAD_FRAME, "raw length set on an uncompressed frame")
        return
    if frame.type in NEVER_COMPRESSED:
        raise remote(ErrorCode.BAD_FRAME, f"{name} is never compressed")
    if frame.raw_length > raw_cap:
        raise remote(
            ErrorCode.DECOMPRESSION_FAILED,
            f"{name} declares {frame.raw_length} B decompressed > {raw_cap}",
        )


def compress(payload: bytes | memoryview) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)


def decompress_into(payload: bytes | memoryview, out: memoryview) -> None:
    """Decompress one zstd frame into exactly ``len(out)`` bytes (the declared size).

    Reading is capped at the declared size, so a bomb costs at most that much memory; a
    payload that yields fewer or more bytes than declared is refused.
    """
    try:
        with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
            got = _read_fully(reader, out)
            extra = reader.read(1)
    except zstandard.ZstdError as exc:
        raise remote(ErrorCode.DECOMPRESSION_FAILED, f"zstd: {exc}") from None
    if got != len(out) or extra:
        raise remote(
            ErrorCode.DECOMPRESSION_FAILED, f"decompressed size differs from declared {len(out)}"
        )


def _read_fully(reader: zstandard.ZstdDecompressionReader, out: memoryview) -> int:
    got = 0
    while got < len(out):
        n = reader.readinto(out[got:])
        if n == 0:
            break
        got += n
    return got


def decompress(payload: bytes | memoryview, raw_length: int) -> bytes:
    out = bytearray(raw_length)  # bounded by Limits.max_decompressed_bytes (checked in header)
    decompress_into(payload, memoryview(out))
    return bytes(out)
