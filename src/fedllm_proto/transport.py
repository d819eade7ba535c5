"""Asyncio transport: ``serve`` / ``connect`` / ``prepare`` around sans-I/O Connections.

Rules: plain TCP only when ``ssl_context`` is None (the daemons gate that behind --insecure).
The server accepts sockets itself and wraps each one (``connect_accepted_socket``), so every
refusal -- plaintext into TLS, wrong or missing certificate, revoked client, handshake timeout
-- is logged as ``peer_refused`` with the address and a readable reason, and only that peer is
dropped. Failed TLS handshakes and failed accepts (``accept_failed``, e.g. EMFILE) are logged at
most ``LOG_BURST`` times per ``LOG_EVERY_S`` each, with ``suppressed``: how many went unlogged
before that event (a flood of them must not flood the log; the counters still see every one). A
peer refused after a successful TLS handshake (revoked, no client id) is first told so with an
Error(UNAUTHORIZED) frame: it must not mistake the refusal for a lost link. Connection caps
(``fedllm_proto.admission``) are applied at the accept, before the TLS handshake; every refusal,
at the caps or in TLS, is also reported to ``on_refused`` with a short reason for the server's
counters. Identity and revocation come from ``fedllm_proto.tls``. uvloop is used by ``run`` when
installed. Time given to Connections is ``loop.time()`` (monotonic).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from fedllm_proto import tls
from fedllm_proto.admission import LOG_BURST, LOG_EVERY_S, Admission, LogThrottle, OnRefused
from fedllm_proto.connection import Connection
from fedllm_proto.errors import ErrorCode, ProtocolError
from fedllm_proto.limits import Limits
from fedllm_proto.messages import PROTOCOL_VERSIONS, Message
from fedllm_proto.peer import Peer, PeerClosed, WireProtocol, log
from fedllm_proto.states import Role
from fedllm_proto.timeouts import CLIENT, SERVER, Timeouts
from fedllm_proto.wire import EncodedMessage, encode_message

__all__ = [
    "Peer",
    "PeerClosed",
    "PreparedMessage",
    "Server",
    "Timeouts",
    "connect",
    "prepare",
    "run",
    "serve",
]
OnPeer = Callable[[Peer], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A message encoded once; ``Peer.send_prepared`` sends these same bytes to every peer."""

    message: Message
    encoded: EncodedMessage

    @property
    def nbytes(self) -> int:
        return self.encoded.nbytes


def prepare(msg: Message, limits: Limits | None = None) -> PreparedMessage:
    """Encode ``msg`` once (pure CPU work: fine in ``asyncio.to_thread``)."""
    return PreparedMessage(msg, encode_message(msg, max(PROTOCOL_VERSIONS), limits or Limits()))


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main)
    return uvloop.run(main)


def _address(transport: asyncio.BaseTransport) -> str:  # "host:port" for the logs
    peername = transport.get_extra_info("peername")
    return f"{peername[0]}:{peername[1]}" if peername else "?"


@dataclass(frozen=True, slots=True)
class _ServerConfig:
    on_peer: OnPeer
    ssl_context: ssl.SSLContext | None
    timeouts: Timeouts
    limits: Limits
    revocation: tls.RevocationList | None
    admission: Admission | None = None
    on_refused: OnRefused | None = None

    def refused(self, reason: str, address: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason, address)

    def protocol(self) -> WireProtocol:
        conn = Connection(
            Role.SERVER,
            limits=self.limits,
            heartbeat_interval_s=self.timeouts.heartbeat_s,
            idle_timeout_s=self.timeouts.idle_s,
            now=asyncio.get_running_loop().time(),
        )
        return WireProtocol(conn, self.timeouts)


class Server(asyncio.AbstractServer):
    """The listener ``serve`` returns: ``sockets``, ``close()``, ``wait_closed()``.

    It accepts itself (``sock_accept``) and hands each socket to ``connect_accepted_socket``
    so that a failed TLS handshake raises *here*, where it is logged with the address; an
    asyncio server would swallow it. Closing stops accepting; live peers are left to their
    owners (as asyncio's own servers do).
    """

    def __init__(self, sock: socket.socket, cfg: _ServerConfig) -> None:
        self._sock = sock
        self._cfg = cfg
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        # a flood (EMFILE, failed TLS handshakes) logs a burst per period, then counts
        self._accept_failures = LogThrottle(LOG_EVERY_S, LOG_BURST)
        self._tls_failures = LogThrottle(LOG_EVERY_S, LOG_BURST)
        self._accepting = self._loop.create_task(self._accept_loop())

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._sock.fileno() < 0 else (self._sock,)

    def close(self) -> None:
        self._accepting.cancel()
        self._sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._accepting.done()

    async def start_serving(self) -> None:
        return None  # already accepting

    async def serve_forever(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting

    async def _accept_loop(self) -> None:
        while True:
            try:
                sock, addr = await self._loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and friends: keep serving the others
                if self._accept_failures.allow(self._loop.time()):
                    suppressed = self._accept_failures.suppressed
                    log.error("accept_failed", error=str(exc), suppressed=suppressed)
                await asyncio.sleep(0.1)
                continue
            host, address = str(addr[0]), f"{addr[0]}:{addr[1]}"
            admission = self._cfg.admission
            reason = None if admission is None else admission.admit(host)
            if reason is not None:  # before any TLS work: a refused socket costs one accept
                sock.close()
                self._cfg.refused(reason, address)
                continue
            task = self._loop.create_task(self._handle(sock, address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if admission is not None:
                # a done callback, not a finally: it runs even if the task never started
                task.add_done_callback(functools.partial(_release, admission, host))

    async def _handle(self, sock: socket.socket, address: str) -> None:
        opened = await self._open(sock, address)
        if opened is None:
            return
        proto, peer_id = opened
        peer = Peer(proto, peer_id)
        log.info("peer_connected", address=address, peer_id=peer_id)
        try:
            await self._cfg.on_peer(peer)
        except Exception:
            log.exception("peer_handler_failed", address=address, peer_id=peer_id)
        finally:
            await peer.close("server closed the connection")

    async def _open(self, sock: socket.socket, address: str) -> tuple[WireProtocol, str] | None:
        """Wrap the socket (TLS handshake + identity + deny-list when TLS); None if refused."""
        cfg = self._cfg
        tls_args: dict[str, Any] = {}
        if cfg.ssl_context is not None:
            deadline = cfg.timeouts.tls_handshake_s
            tls_args = {"ssl": cfg.ssl_context, "ssl_handshake_timeout": deadline}
        transport: asyncio.BaseTransport | None = None
        proto = cfg.protocol()
        proto.address = address
        try:
            # uvloop returns its SSLProtocol here, not ours: keep our own reference.
            transport, _ = await self._loop.connect_accepted_socket(lambda: proto, sock, **tls_args)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None:
                return proto, ""
            return proto, tls.authorize_peer(ssl_object, cfg.revocation)
        except tls.PeerRejected as exc:
            cfg.refused("tls_unauthorized", address)
            await _tell_unauthorized(proto, str(exc))
            return None
        except (OSError, ssl.SSLError, EOFError, TimeoutError) as exc:
            reason = _handshake_reason(exc)
            cfg.refused(_handshake_kind(exc), address)
        if self._tls_failures.allow(self._loop.time()):
            suppressed = self._tls_failures.suppressed  # refused since the last event
            log.warning("peer_refused", address=address, reason=reason, suppressed=suppressed)
        if transport is not None:
            cast(asyncio.Transport, transport).abort()
        sock.close()
        return None


def _release(admission: Admission, host: str, _task: asyncio.Task[None]) -> None:
    admission.release(host)


async def _tell_unauthorized(proto: WireProtocol, reason: str) -> None:
    """Refuse a peer whose TLS handshake succeeded (revoked, no client id) with an Error frame.

    Dropping it silently would look like a lost link, and the client would retry forever; the
    Error(UNAUTHORIZED) tells it that retrying cannot help. ``fail`` logs ``peer_refused``,
    writes the frame and closes (for TLS: close_notify, while still reading and discarding what
    the client sends, so no RST destroys the frame). A client that never answers the closure
    is cut off after ``close_flush_s``.
    """
    proto.fail(ProtocolError(ErrorCode.UNAUTHORIZED, reason), "peer_refused")
    try:
        await asyncio.wait_for(asyncio.shield(proto.lost), proto.timeouts.close_flush_s)
    except TimeoutError:
        if proto.transport is not None:
            proto.transport.abort()


def _handshake_kind(exc: BaseException) -> str:
    """The refusal's label for counters: timed out, or failed (any other TLS error)."""
    if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
        return "tls_handshake_timeout"
    return "tls_handshake_failed"


def _handshake_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
        return "TLS handshake timed out (silent or non-TLS peer)"
    return tls.handshake_failure_reason(exc)


async def serve(
    on_peer: OnPeer,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    *,
    timeouts: Timeouts = SERVER,
    limits: Limits | None = None,
    revocation: tls.RevocationList | None = None,
    admission: Admission | None = None,
    on_refused: OnRefused | None = None,
) -> Server:
    """Listen; run ``on_peer(peer)`` as its own task per accepted, authorised connection.

    The peer is closed (Bye) when ``on_peer`` returns. ``ssl_context=None`` means plain TCP.
    ``admission`` caps open sockets (None: no cap); ``on_refused(reason, address)`` hears of
    every refused peer. Raises OSError when the address cannot be bound.
    """
    cfg = _ServerConfig(
        on_peer, ssl_context, timeouts, limits or Limits(), revocation, admission, on_refused
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=256)
    sock.setblocking(False)
    log.info("transport_listening", host=host, port=sock.getsockname()[1], tls=bool(ssl_context))
    return Server(sock, cfg)


async def connect(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    *,
    timeouts: Timeouts = CLIENT,
    limits: Limits | None = None,
) -> Peer:
    """Connect (TLS when ``ssl_context`` is given). The heartbeat interval defaults to the
    one the server announces in Welcome. Raises OSError / ssl.SSLError / TimeoutError."""
    loop = asyncio.get_running_loop()
    conn = Connection(
        Role.CLIENT,
        limits=limits or Limits(),
        heartbeat_interval_s=timeouts.heartbeat_s,
        idle_timeout_s=timeouts.idle_s,
        now=loop.time(),
    )
    tls_args: dict[str, Any] = {}
    if ssl_context is not None:
        tls_args = {"ssl": ssl_context, "server_hostname": server_hostname or host}
    proto = WireProtocol(conn, timeouts)
    async with asyncio.timeout(timeouts.tls_handshake_s):
        transport, _ = await loop.create_connection(lambda: proto, host, port, **tls_args)
    proto.address = _address(transport)
    return Peer(proto, _server_identity(transport))


def _server_identity(transport: asyncio.BaseTransport) -> str:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return ""
    try:
        return tls.peer_identity(ssl_object)
    except tls.PeerRejected:
        return ""
