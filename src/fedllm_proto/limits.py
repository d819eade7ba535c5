"""Resource limits a receiver enforces before it allocates anything on a peer's say-so.

One frozen, validated value shared by frames, codec and connection. The defaults fit a full
OPT-1.3B in fp32 (~5.2 GB) in one chunked transfer; daemons narrow them from their settings.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Receive limits (see docs/protocol.md, "Limits")."""

    max_frame_bytes: int = 16 * MiB  # payload of any single frame, as declared in its header
    max_decompressed_bytes: int = 64 * MiB  # one compressed frame's declared/actual output
    # A server's every frame until the conversation is open (Hello and what may surround it),
    # on the wire and decompressed: an unauthenticated peer's header buys at most this much.
    max_handshake_bytes: int = 32 * KiB
    # Heartbeat, Ack, TrainRequest, Reject, Error, Bye: on the wire and decompressed.
    max_control_bytes: int = 64 * KiB
    max_message_bytes: int = 6 * GiB  # body of one chunked tensor message (encoded)
    max_tensor_bytes: int = 6 * GiB  # all tensors of one message once decoded (dense)
    max_tensors: int = 4096
    max_ndim: int = 8
    max_name_bytes: int = 512
    chunk_bytes: int = 4 * MiB  # what this side SENDS per chunk frame (receivers accept any)
    compress_threshold: int = 4 * KiB  # msgpack payloads above this are zstd-compressed

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 0:
                raise ValueError(f"Limits.{name} must be >= 0")
        if not 0 < self.chunk_bytes <= self.max_frame_bytes:
            raise ValueError("Limits.chunk_bytes must be in (0, max_frame_bytes]")
        if self.max_frame_bytes >= 2**32 or self.max_decompressed_bytes >= 2**32:
            raise ValueError("frame sizes must fit the 32-bit header fields")
