"""The asyncio shell around one ``Connection``: a BufferedProtocol plus the ``Peer`` facade.

Rules: the protocol object only feeds bytes in (straight into the space the reader asks for,
so tensor bodies are decrypted/received into their final buffer) and queues events out; one
write lock serialises whole messages so frames never interleave; every write is followed by
flow control (and a bounded wait, so a stuck peer cannot pin a sender forever); one timer
task does heartbeats and the idle timeout. All errors that end a peer are logged here once,
with its address and reason. The only module besides transport.py/tls.py touching asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, cast

import structlog

from fedllm_proto import tls
from fedllm_proto.connection import Connection, ConnectionClosed
from fedllm_proto.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from fedllm_proto.messages import Bye, ByeCode, Error, Message
from fedllm_proto.states import State
from fedllm_proto.timeouts import Timeouts
from fedllm_proto.wire import Buffer, EncodedMessage

log = structlog.get_logger("fedllm.transport")
INBOX_MESSAGES = 4  # received messages queued before we stop reading (bounded memory)
# Largest single transport.write. Smaller slices bound what the TLS layer buffers per
# connection (server RSS per client after broadcasts to 2,000 clients: 87 KiB with 16 KiB
# slices, 127-138 KiB with 64 KiB-1 MiB) but cost a call each: 16 KiB slices made a 4 MB
# broadcast to 500 clients 1.5x slower (bench/broadcast.py), so throughput wins here.
WRITE_SLICE = 256 << 10
YIELD_BYTES = 256 << 10  # a writer gives the loop a turn at least this often (see write)
# Where a dead connection's remaining bytes go: one for all (they are never read), because
# 64 KiB per connection was a third of the server's memory per client at 10,000 clients.
_DISCARD = memoryview(bytearray(65536))


class PeerClosed(Exception):
    """The link is gone: the one exception ``Peer.send``/``Peer.recv`` raise when it ends.

    Whatever ended it (the peer's Bye or Error frame, a lost socket, the peer breaking the
    protocol, the idle timeout, a send that stalled, a send after the end), callers catch this
    one type and read why from it; anything else escaping a Peer is a bug. ``kind`` is a
    stable word for logs and metrics: bye, error (the peer's Error frame), protocol (the peer
    broke the protocol; ``cause`` is our RemoteProtocolError), idle, stalled, lost, closed.
    """

    def __init__(
        self,
        reason: str,
        error: Error | None = None,
        *,
        bye: Bye | None = None,
        cause: BaseException | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error  # the peer's Error message, when that is how it ended
        self.bye = bye  # the peer's Bye (its code says why), when that is how it ended
        self.cause = cause  # what broke the connection (e.g. a TLS alert), when known
        self.kind = kind or ("bye" if bye else "error" if error else "lost" if cause else "closed")

    @property
    def code(self) -> ErrorCode | None:
        """The wire error code behind the end, when there is one (ours or the peer's)."""
        if self.error is not None:
            return self.error.code
        return self.cause.code if isinstance(self.cause, ProtocolError) else None


_Item = Message | BaseException


class WireProtocol(asyncio.BufferedProtocol):
    def __init__(self, conn: Connection, timeouts: Timeouts, address: str = "?") -> None:
        self.timeouts = timeouts
        self.conn = conn
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.inbox: collections.deque[_Item] = collections.deque()
        self.bytes_received = 0
        self._dead = False
        self._writing = False  # a message is partly written (see fail)
        self._reading_paused = False
        self._wakeup: asyncio.Event = asyncio.Event()
        self._can_write: asyncio.Event = asyncio.Event()
        self._can_write.set()
        self.timer_kick: asyncio.Event = asyncio.Event()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        return _DISCARD if self._dead else self.conn.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self._dead:
            return
        self.bytes_received += nbytes
        try:
            self.conn.buffer_updated(nbytes, _now())
        except ProtocolError as exc:
            self._drain_events()
            self.fail(exc, "peer_protocol_error")
            return
        self._drain_events()

    def eof_received(self) -> bool:
        if not self._dead:
            try:
                self.conn.receive_data(b"", _now())
            except ProtocolError as exc:
                self._drain_events()
                self.fail(exc, "peer_transfer_aborted")
                return False
            self._drain_events()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        self._can_write.set()
        if not self.inbox or not isinstance(self.inbox[-1], BaseException):
            self._push(PeerClosed(f"connection lost: {exc or 'closed'}", cause=exc, kind="lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _drain_events(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError:
                return  # raised again by the caller's receive step
            if isinstance(event, Bye):
                self._push(PeerClosed(f"bye: {event.reason}", bye=event))
                self._close_on_bye()
            elif isinstance(event, Error):
                self._push(PeerClosed(f"error {event.code.name}: {event.detail}", event))
            elif isinstance(event, ConnectionClosed):
                self._push(PeerClosed("connection closed by peer", kind="lost"))
            elif isinstance(event, Message):
                self._push(event)
            else:
                return
        # unreachable

    def _push(self, item: _Item) -> None:
        self.inbox.append(item)
        self._wakeup.set()
        self.timer_kick.set()
        if len(self.inbox) >= INBOX_MESSAGES and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()  # backpressure: the app is slower than the peer

    def pop(self) -> _Item | None:
        if not self.inbox:
            self._wakeup.clear()
            return None
        item = self.inbox.popleft()
        if self._reading_paused and len(self.inbox) < INBOX_MESSAGES // 2 and not self._dead:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return item

    async def wait(self) -> None:
        await self._wakeup.wait()

    def _close_on_bye(self) -> None:
        # Nothing may be sent after the peer's Bye, and the peer keeps the link up until we
        # close (see drain_input): close now, flushing what is buffered, whatever the app does.
        if self.transport is not None and not self._dead:
            self.transport.close()

    def drain_input(self) -> None:
        """Keep reading after our Bye: the connection drops what the peer still sends (the
        rest of an upload it was writing when our Bye went out) and reports only its Bye,
        so the link stays up until the peer closes in turn."""
        if self._reading_paused and self.transport is not None and not self._dead:
            self._reading_paused = False
            self.transport.resume_reading()

    def fail(self, exc: ProtocolError, event: str) -> None:
        """Log why, tell the peer with an Error frame, close, and surface the error."""
        log.warning(event, address=self.address, code=exc.code.name, reason=exc.detail)
        if self.transport is not None and not self._dead:
            if self._writing:  # mid-frame: an Error frame now would corrupt the stream
                self.transport.close()
            else:
                self.transport.write(self.conn.send_error(exc, _now()))
                self._close_after_error(self.transport)
        self._dead = True
        kind = "idle" if exc.code is ErrorCode.IDLE_TIMEOUT else "protocol"
        self._push(PeerClosed(f"{event}: {exc.detail}", cause=exc, kind=kind))

    def _close_after_error(self, transport: asyncio.Transport) -> None:
        # Closing with unread input makes the kernel send RST, which can destroy our Error
        # frame before the peer reads it: half-close, keep discarding input, close later.
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(self.timeouts.linger_s, transport.close)
        else:
            transport.close()

    async def write(self, buffers: list[Buffer], stall_timeout_s: float | None) -> int:
        """Write buffers in order with flow control; returns bytes written.

        Big views go out in slices of ``WRITE_SLICE`` with a writability check after each,
        so the TLS layer encrypts (and buffers) at most about one slice ahead of the socket,
        and the loop gets a turn every ``YIELD_BYTES``: a TLS write encrypts on the loop, and
        while sockets stay writable a broadcast wrote every client's whole model in one turn
        (2 s at 2,000 clients x 1 MB, during which no join or heartbeat was served).
        """
        assert self.transport is not None
        self._writing = True
        try:
            return await self._write_all(buffers, stall_timeout_s)
        finally:
            self._writing = False

    async def _write_all(self, buffers: list[Buffer], stall_timeout_s: float | None) -> int:
        assert self.transport is not None
        total = unyielded = 0
        for buf in buffers:
            view = memoryview(buf)
            for start in range(0, max(len(view), 1), WRITE_SLICE):
                if self._dead or self.transport.is_closing():
                    raise PeerClosed("connection closed while sending", kind="closed")
                piece = view[start : start + WRITE_SLICE]
                self.transport.write(piece)
                unyielded += piece.nbytes
                if not self._can_write.is_set():
                    await self._wait_writable(stall_timeout_s)
                    unyielded = 0
                elif unyielded >= YIELD_BYTES:
                    await asyncio.sleep(0)  # writable all along: still give the loop a turn
                    unyielded = 0
            total += view.nbytes
        return total

    async def _wait_writable(self, stall_timeout_s: float | None) -> None:
        try:
            await asyncio.wait_for(self._can_write.wait(), stall_timeout_s)
        except TimeoutError as exc:
            log.warning("peer_send_stalled", address=self.address, timeout_s=stall_timeout_s)
            assert self.transport is not None
            self.transport.abort()
            detail = f"peer read nothing for {stall_timeout_s}s"
            raise PeerClosed(f"send stalled: {detail}", cause=exc, kind="stalled") from exc
        if self._dead:
            raise PeerClosed("connection closed while sending", kind="closed")


def _now() -> float:
    return asyncio.get_running_loop().time()


class Peer:
    """One connected peer: send/recv typed messages; heartbeats and idle handled inside."""

    def __init__(self, proto: WireProtocol, peer_id: str) -> None:
        self._proto = proto
        self._conn = proto.conn
        self.peer_id = peer_id  # client id from the certificate CN ("" on plain TCP)
        self.address = proto.address
        self.bytes_sent = 0
        self._timeouts = proto.timeouts
        self._lock = asyncio.Lock()
        self._closing: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().create_task(self._timer_loop())

    @property
    def protocol_version(self) -> int:
        return self._conn.protocol_version or self._conn.send_version

    @property
    def bytes_received(self) -> int:
        return self._proto.bytes_received

    @property
    def connection(self) -> Connection:
        return self._conn

    @property
    def certificate_serial(self) -> int | None:
        """Serial of the peer's verified certificate (None on plain TCP): the revocation key."""
        transport = self._proto.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return tls.peer_serial(ssl_object) if ssl_object is not None else None

    async def send(self, msg: Message) -> None:
        async with self._lock:
            self._check_sendable()
            await self._write(self._conn.send_buffers(msg, _now()))

    async def send_prepared(self, prepared: Any) -> None:
        """Send a message encoded once by ``transport.prepare`` (same bytes to every peer)."""
        encoded: EncodedMessage = prepared.encoded
        async with self._lock:
            self._check_sendable()
            await self._write(self._conn.send_encoded(encoded, prepared.message, _now()))

    def _check_sendable(self) -> None:
        # ERROR: the reader just failed this link (the peer broke the protocol or went idle);
        # a send then is a dead link like any other, not our bug.
        if self._proto.lost.done() or self._conn.state in (State.CLOSED, State.ERROR):
            raise PeerClosed("connection is closed", kind="closed")

    async def _write(self, buffers: list[Buffer]) -> None:
        self.bytes_sent += await self._proto.write(buffers, self._timeouts.idle_s)
        # A send can change the state (and so whether and when a heartbeat is due): re-arm.
        self._proto.timer_kick.set()

    async def recv(self) -> Message:
        """The next message; raises PeerClosed (and only that) once the link has ended."""
        while True:
            item = self._proto.pop()
            if item is None:
                await self._proto.wait()
                continue
            if isinstance(item, BaseException):
                self._proto.inbox.appendleft(item)  # every later recv raises it again
                raise item
            return item

    async def close(self, reason: str = "", code: ByeCode = ByeCode.UNSPECIFIED) -> None:
        """Send Bye (if the conversation is still open) and close the connection.

        ``code`` tells the peer why (restarting, finished, revoked, ...); the first call's wins.

        Returns once what we still had buffered has gone out (bounded by ``close_flush_s``). Safe
        to call more than once and from several tasks: later calls wait for the first close
        instead of returning while it is still flushing.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason, code))
        await asyncio.shield(self._closing)

    async def _close(self, reason: str, code: ByeCode) -> None:
        transport = self._proto.transport
        said_bye = False
        try:
            async with asyncio.timeout(self._timeouts.bye_s):
                async with self._lock:
                    if self._conn.state not in (State.CLOSED, State.ERROR, State.IDLE):
                        bye = Bye(reason[:4096], code)
                        await self._write(self._conn.send_buffers(bye, _now()))
                        said_bye = True
        except (PeerClosed, TimeoutError, OSError, LocalProtocolError):
            pass
        self._timer.cancel()
        if transport is None:
            return
        if said_bye and await self._peer_closed_after_bye():
            return
        transport.close()
        await self._flushed(transport)

    async def _peer_closed_after_bye(self) -> bool:
        # Closing TLS at once would make any bytes the peer is still sending (the tail of an
        # upload) an SSL error (application data after close_notify) that aborts the transport
        # and drops what we had buffered, often the tail of a model sent just before the Bye.
        # So the side that says Bye keeps reading, drops the rest, and lets the peer, which
        # closes on Bye, close first; a peer that does not is closed on after close_flush_s.
        self._proto.drain_input()
        try:
            await asyncio.wait_for(asyncio.shield(self._proto.lost), self._timeouts.close_flush_s)
        except TimeoutError:
            return False
        return True

    async def _flushed(self, transport: asyncio.Transport) -> None:
        # close() only schedules the flush of what is still buffered (the Bye, perhaps the tail
        # of a model). A caller that returns and ends its event loop next (a daemon shutting
        # down) would drop it: the peer then sees a lost connection instead of a Bye, and a
        # client reconnects forever. So wait until it is gone; a peer that stopped reading is
        # cut off after ``close_flush_s``.
        try:
            await asyncio.wait_for(asyncio.shield(self._proto.lost), self._timeouts.close_flush_s)
        except TimeoutError:
            transport.abort()

    async def wait_closed(self) -> None:
        await self._proto.lost

    async def _timer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._proto.lost.done():
            deadline = self._conn.get_timer()
            delay = 1.0 if deadline is None else max(0.0, deadline - loop.time())
            # A received message can move the deadline (Welcome sets the heartbeat interval).
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns normally when the kick
            # and a cancel land in the same turn, and this loop then outlived its cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._proto.timer_kick.wait()
            self._proto.timer_kick.clear()
            self._tick(loop.time())

    def _tick(self, now: float) -> None:
        if self._proto.lost.done() or self._conn.state in (State.CLOSED, State.ERROR):
            return
        if self._proto.reading_paused:
            self._conn.note_alive(now)  # we stopped reading on purpose: not the peer's silence
        try:
            data = self._conn.handle_timer(now, can_send=not self._lock.locked())
        except RemoteProtocolError as exc:
            self._proto.fail(exc, "peer_idle_timeout")
            return
        if data and self._proto.transport is not None:
            self._proto.transport.write(data)
            self.bytes_sent += len(data)
