"""The one error hierarchy of the wire, with numeric error codes carried by Error frames.

Rules: sans-I/O code raises only these. ``RemoteProtocolError`` means the peer broke the protocol
(the transport answers with an Error frame and disconnects); ``LocalProtocolError`` means our own
code tried something illegal (a bug in the caller, never the peer's fault). Anything else escaping
the receive path is a bug in fedllm_proto and is re-labelled at one boundary in ``Connection``.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Wire error codes (docs/protocol.md, "Error codes"); the numbers never change meaning."""

    PROTOCOL_VIOLATION = 1  # generic: the peer broke a rule not covered below
    BAD_FRAME = 2  # bad magic, reserved flags set, malformed header
    FRAME_TOO_LARGE = 3  # declared payload length above the limit
    DECOMPRESSION_FAILED = 4  # zstd error or decompressed size above the limit (a bomb)
    BAD_MESSAGE = 5  # payload does not decode to a valid message
    LIMIT_EXCEEDED = 6  # tensor count, dtype, shape or total size outside the limits
    UNSUPPORTED_VERSION = 7  # no protocol version in common
    UNEXPECTED_MESSAGE = 8  # message not allowed in the current state
    IDLE_TIMEOUT = 9  # nothing received within the idle timeout
    TRANSFER_ABORTED = 10  # connection ended in the middle of a chunked transfer
    UNAUTHORIZED = 11  # certificate revoked or identity refused
    INTERNAL = 12  # the sender hit a bug; not the receiver's fault
    SHUTTING_DOWN = 13  # the sender is going away


class ProtocolError(Exception):
    """Base of every wire error; ``code`` is what an Error frame carries."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.name.lower()}: {detail}")
        self.code = code
        self.detail = detail


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol."""


class LocalProtocolError(ProtocolError):
    """Our own side tried to send something the protocol forbids (a caller bug)."""


def remote(code: ErrorCode, detail: str) -> RemoteProtocolError:
    """Shorthand used by the parsers: ``raise remote(ErrorCode.BAD_FRAME, "...")``."""
    return RemoteProtocolError(code, detail)
