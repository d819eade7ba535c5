"""Sans-I/O connection: bytes in, typed messages out; messages in, bytes out; time is ``now``.

Rules (h11/aioquic style): never touches a socket or a clock. ``receive_data(b"", now)`` is
EOF. Every received header is checked against the state table and the negotiated version
before its payload is allocated. A remote protocol error moves the connection to ERROR and is
re-raised on every later receive; the transport answers it with ``send_error`` and closes.
A failed connection keeps only the error's class, code and detail (never the exception: its
traceback would pin the frames that decoded the payload) and drops the reader's buffers.
Timers: ``get_timer()`` is the next deadline, ``handle_timer(now)`` raises IDLE_TIMEOUT or
returns a heartbeat to send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fedllm_proto import frames
from fedllm_proto.errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    remote,
)
from fedllm_proto.frames import FrameHeader, FrameType
from fedllm_proto.limits import Limits
from fedllm_proto.messages import (
    PROTOCOL_VERSIONS,
    Bye,
    Error,
    Heartbeat,
    Hello,
    Message,
    Welcome,
)
from fedllm_proto.reader import FrameReader
from fedllm_proto.states import Direction, Role, State, next_state
from fedllm_proto.wire import Buffer, EncodedMessage, encode_message


class NeedData:
    """``next_event()`` result when more bytes are needed."""


NEED_DATA = NeedData()
_BEFORE_OPEN = frozenset({State.IDLE, State.HELLO_RECEIVED})  # a server's states before Welcome


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its end cleanly (EOF between messages)."""


Event = Message | NeedData | ConnectionClosed


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a connection failed, without the exception (and so without its traceback)."""

    local: bool
    code: ErrorCode
    detail: str

    @classmethod
    def of(cls, exc: ProtocolError) -> _Failure:
        return cls(isinstance(exc, LocalProtocolError), exc.code, exc.detail)

    def error(self) -> ProtocolError:
        """A fresh exception each time: re-raising one object would grow its traceback."""
        kind = LocalProtocolError if self.local else RemoteProtocolError
        return kind(self.code, self.detail)


class Connection:
    """One side of one conversation. ``role`` decides which messages it may send."""

    def __init__(
        self,
        role: Role,
        *,
        limits: Limits | None = None,
        versions: tuple[int, ...] = PROTOCOL_VERSIONS,
        heartbeat_interval_s: float | None = None,
        idle_timeout_s: float | None = None,
        now: float = 0.0,
    ) -> None:
        self.role = role
        self.limits = limits or Limits()
        self.versions = versions
        self.heartbeat_interval_s = heartbeat_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.state = State.IDLE
        self.protocol_version: int | None = None  # set by version negotiation
        self.offered_versions: tuple[int, ...] = ()  # the peer's (server) / our (client) Hello
        self.peer_hello: Hello | None = None
        # We sent Bye: until the link ends, frames still arriving are read and dropped (a
        # Bye or Error among them is reported) instead of being protocol errors.
        self.said_bye = False
        self._events: deque[Message | ConnectionClosed] = deque()
        self._failure: _Failure | None = None
        self._last_recv = now
        self._last_send = now
        self._reader = FrameReader(self.limits, self._on_header, self._on_message)

    # ---- receiving ----------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed received bytes; ``b""`` means EOF. Raises RemoteProtocolError on bad input."""
        self._check_alive()
        self._last_recv = now
        if not data:
            self._guard(self._reader.eof)
            self._events.append(ConnectionClosed())
            self.state = State.CLOSED if self.state is not State.ERROR else self.state
            return
        self._guard(lambda: self._reader.feed(data))

    def get_buffer(self) -> memoryview:
        """Writable space for the next bytes (``recv_into`` target); then ``buffer_updated``."""
        self._check_alive()
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int, now: float) -> None:
        self._check_alive()
        self._last_recv = now
        self._guard(lambda: self._reader.buffer_updated(nbytes))

    def next_event(self) -> Event:
        if self._events:
            return self._events.popleft()
        if self._failure is not None:
            raise self._failure.error()
        return NEED_DATA

    @property
    def in_transfer(self) -> bool:
        """True while a chunked tensor message is partly received."""
        return self._reader.in_transfer

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise self._failure.error()

    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except ProtocolError as exc:
            failure = _Failure.of(exc)
        else:
            return
        # Raised outside the except block, so the new error has no __context__ pointing at
        # the original and its traceback (the reader frames holding the payload).
        self._fail(failure)
        raise failure.error()

    def _fail(self, failure: _Failure) -> None:
        self._failure = failure
        self.state = State.ERROR
        self._reader.discard()

    def _on_header(self, frame: FrameHeader) -> None:
        if self.protocol_version is not None and frame.version != self.protocol_version:
            raise remote(ErrorCode.BAD_FRAME, f"frame version {frame.version} after negotiation")
        if frame.type is FrameType.CHUNK or self._after_our_bye:
            return
        if next_state(self.role, self.state, Direction.RECV, frame.type) is None:
            raise remote(
                ErrorCode.UNEXPECTED_MESSAGE, f"{frame.type.name} in state {self.state.value}"
            )
        if self.role is Role.SERVER and self.state in _BEFORE_OPEN:
            cap = self.limits.max_handshake_bytes  # the peer is not even greeted yet
            frames.check_size(frame, cap, cap)

    @property
    def _after_our_bye(self) -> bool:
        return self.said_bye and self.state is State.CLOSED

    def _on_message(self, msg: Message) -> None:
        if self._after_our_bye:
            if isinstance(msg, Bye | Error):
                self._events.append(msg)
            return
        nxt = next_state(self.role, self.state, Direction.RECV, msg.TYPE)
        assert nxt is not None  # _on_header already refused illegal types
        if isinstance(msg, Hello):
            self._negotiate(msg)
        elif isinstance(msg, Welcome):
            self._accept_welcome(msg)
        self.state = nxt
        if not isinstance(msg, Heartbeat):
            self._events.append(msg)

    def _negotiate(self, hello: Hello) -> None:
        common = set(hello.protocol_versions) & set(self.versions)
        if not common:
            raise remote(
                ErrorCode.UNSUPPORTED_VERSION,
                f"peer speaks {hello.protocol_versions}, we speak {self.versions}",
            )
        self.protocol_version = max(common)
        self.offered_versions = hello.protocol_versions
        self.peer_hello = hello

    def _accept_welcome(self, welcome: Welcome) -> None:
        if welcome.protocol_version not in self.offered_versions:
            raise remote(ErrorCode.UNSUPPORTED_VERSION, "Welcome picked a version we never offered")
        self.protocol_version = welcome.protocol_version
        if self.heartbeat_interval_s is None:
            self.heartbeat_interval_s = welcome.heartbeat_interval_s

    # ---- sending ------------------------------------------------------------------------
    @property
    def send_version(self) -> int:
        return self.protocol_version or min(self.versions)

    def send(self, msg: Message, now: float) -> bytes:
        """The bytes of ``msg`` joined (convenient for small messages and tests)."""
        return b"".join(self.send_buffers(msg, now))

    def send_buffers(self, msg: Message, now: float) -> list[Buffer]:
        """The bytes of ``msg`` as buffers; tensor bodies are views of the caller's arrays."""
        self._before_send(msg)
        return self._sent(encode_message(msg, self.send_version, self.limits), msg, now)

    def send_encoded(self, encoded: EncodedMessage, msg: Message, now: float) -> list[Buffer]:
        """Send bytes encoded once for many peers (``transport.prepare``)."""
        if encoded.version != self.send_version:
            return self.send_buffers(msg, now)  # a peer on another version: encode for it
        self._before_send(msg)
        return self._sent(encoded, msg, now)

    def send_error(self, exc: ProtocolError, now: float) -> bytes:
        """An Error frame for ``exc``; legal in any state but CLOSED (returns b"" there)."""
        if self.state is State.CLOSED:
            return b""
        self.state = State.CLOSED
        encoded = encode_message(Error(exc.code, exc.detail[:4096]), self.send_version, self.limits)
        self._last_send = now
        return b"".join(b for frame in encoded.frames for b in frame)

    def _before_send(self, msg: Message) -> None:
        if self.state is State.ERROR:
            raise LocalProtocolError(ErrorCode.PROTOCOL_VIOLATION, "connection is in error")
        nxt = next_state(self.role, self.state, Direction.SEND, msg.TYPE)
        if nxt is None:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"cannot send {msg.TYPE.name} in {self.state.value}"
            )
        if isinstance(msg, Hello):
            self.offered_versions = msg.protocol_versions
        if isinstance(msg, Welcome) and msg.protocol_version != self.protocol_version:
            raise LocalProtocolError(
                ErrorCode.UNSUPPORTED_VERSION, f"negotiated version is {self.protocol_version}"
            )

    def _sent(self, encoded: EncodedMessage, msg: Message, now: float) -> list[Buffer]:
        nxt = next_state(self.role, self.state, Direction.SEND, msg.TYPE)
        assert nxt is not None
        self.state = nxt
        self.said_bye = self.said_bye or isinstance(msg, Bye)
        self._last_send = now
        return [b for frame in encoded.frames for b in frame]

    # ---- timers -------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """The next time ``handle_timer`` has work to do, or None."""
        deadlines = []
        if self.idle_timeout_s is not None and self.state is not State.CLOSED:
            deadlines.append(self._last_recv + self.idle_timeout_s)
        if self.heartbeat_interval_s is not None and self._may_heartbeat():
            deadlines.append(self._last_send + self.heartbeat_interval_s)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float, can_send: bool = True) -> bytes:
        """Raise IDLE_TIMEOUT if the peer went silent; else a heartbeat if one is due.

        ``can_send=False`` (a message is being written right now) counts that write as the
        heartbeat: data in flight already tells the peer we are alive.
        """
        self._check_alive()
        if self.idle_timeout_s is not None and now >= self._last_recv + self.idle_timeout_s:
            detail = f"silent for {self.idle_timeout_s:g}s"
            failure = _Failure(False, ErrorCode.IDLE_TIMEOUT, detail)
            self._fail(failure)
            raise failure.error()
        hb = self.heartbeat_interval_s
        if hb is None or not self._may_heartbeat() or now < self._last_send + hb:
            return b""
        if not can_send:
            self._last_send = now
            return b""
        return self.send(Heartbeat(), now)

    def note_alive(self, now: float) -> None:
        """The transport stopped reading on purpose (backpressure): don't count it as silence."""
        self._last_recv = now

    def _may_heartbeat(self) -> bool:
        return next_state(self.role, self.state, Direction.SEND, FrameType.HEARTBEAT) is not None
