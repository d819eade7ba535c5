"""One task per connection: handshake, then read the client's messages until it goes away.

Rules: the handshake is Hello -> (fingerprint check) -> Welcome -> current GlobalModel; a wrong
fingerprint gets `Reject(fingerprint_mismatch)` and Bye `refused`; a Hello while the server
stops gets a Bye with the stop's code (`restarting` or `finished`). The client id is
the certificate's CN (the transport's `peer_id`); only in insecure mode does Hello's
`client_name` name the client. A second connection with the same id replaces the first: the
old session is closed (`replaced`) before the new one is registered. Updates are judged and
accepted in the engine thread; the Ack is queued only after the update is durable. A client
whose updates keep being rejected (`max_rejects` in a row) gets an Error and is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from fedllm_proto.errors import ErrorCode, ProtocolError
from fedllm_proto.messages import (
    PROTOCOL_VERSIONS,
    Ack,
    Bye,
    ByeCode,
    Error,
    Hello,
    Reject,
    RejectCode,
    Update,
    Welcome,
)
from fedllm_proto.transport import Peer, PeerClosed
from fedllm_server.session import ClientSession

if TYPE_CHECKING:
    from fedllm_server.daemon import Server

log = structlog.get_logger("fedllm.server")


async def handle_peer(server: Server, peer: Peer) -> None:
    """The transport's per-connection callback."""
    session = await _handshake(server, peer)
    if session is None:
        return
    try:
        await _read_loop(server, session)
    except (PeerClosed, ConnectionError, asyncio.IncompleteReadError) as exc:
        log.info("client_disconnected", client_id=session.client_id, reason=repr(exc))
    except TimeoutError:
        log.info("client_idle_timeout", client_id=session.client_id)
    except ProtocolError as exc:
        log.warning(
            "client_protocol_error",
            client_id=session.client_id,
            code=exc.code.name,
            detail=exc.detail,
        )
    finally:
        await _unregister(server, session)


async def _handshake(server: Server, peer: Peer) -> ClientSession | None:
    timeout = server.settings.handshake_timeout_s
    try:
        hello = await asyncio.wait_for(peer.recv(), timeout)
    except (PeerClosed, ProtocolError, TimeoutError, ConnectionError) as exc:
        log.info("handshake_failed", address=peer.address, reason=repr(exc))
        await _close(peer, "handshake failed")
        return None
    if not isinstance(hello, Hello):
        await _refuse(peer, Error(ErrorCode.UNEXPECTED_MESSAGE, "expected hello"))
        return None
    client_id = _identity(server, peer, hello)
    if hello.model_fingerprint != server.fingerprint:
        log.warning(
            "client_fingerprint_mismatch",
            client_id=client_id,
            theirs=hello.model_fingerprint[:16],
            ours=server.fingerprint[:16],
        )
        reject = Reject("", RejectCode.FINGERPRINT_MISMATCH, "model fingerprint differs")
        await _refuse(peer, reject, ByeCode.REFUSED)
        return None
    if server.stopping.is_set():
        # the Bye says whether to come back (restarting) or not (finished)
        await _close(peer, "server is shutting down", server.stop_code)
        return None
    return await _admit(server, peer, hello, client_id)


def _identity(server: Server, peer: Peer, hello: Hello) -> str:
    if server.settings.insecure and hello.client_name:
        return hello.client_name
    return peer.peer_id or peer.address


async def _admit(server: Server, peer: Peer, hello: Hello, client_id: str) -> ClientSession:
    old = server.sessions.pop(client_id, None)
    if old is not None:
        log.info("client_replaced", client_id=client_id, old_address=old.peer.address)
        server.client_left(old)  # the new connection re-joins below (or never, if it fails)
        await old.close("replaced by a new connection")
    session = ClientSession(
        peer, client_id, hello.model_fingerprint, hello.sample_count, server.settings.send_queue
    )
    await peer.send(_welcome(server, peer, client_id))  # registered only once this worked
    server.sessions[client_id] = session
    session.start()
    assert server.prepared is not None  # encoded during start-up, before listening
    session.offer(server.prepared)  # the current global model: a reconnect resynchronises
    await server.client_joined(session)
    log.info(
        "client_connected",
        client_id=client_id,
        address=peer.address,
        model_version=server.engine.version,
        last_global_version=hello.last_global_version,
        sample_count=hello.sample_count,
    )
    return session


def _welcome(server: Server, peer: Peer, client_id: str) -> Welcome:
    strategy = server.settings.strategy
    params = {
        k: v for k, v in strategy.model_dump().items() if isinstance(v, bool | int | float | str)
    }
    version = getattr(peer, "protocol_version", PROTOCOL_VERSIONS[-1])
    return Welcome(
        protocol_version=version,
        client_id=client_id,
        strategy=strategy.name,
        strategy_params=params,
        global_version=server.engine.version,
        heartbeat_interval_s=server.settings.heartbeat_interval_s,
    )


async def _read_loop(server: Server, session: ClientSession) -> None:
    while not session.closed.is_set():
        msg = await _recv_or_closed(session)
        if msg is None or isinstance(msg, Bye):
            log.info(
                "client_bye",
                client_id=session.client_id,
                reason=getattr(msg, "reason", session.close_reason),
            )
            return
        if not isinstance(msg, Update):
            await _refuse(session.peer, Error(ErrorCode.UNEXPECTED_MESSAGE, type(msg).__name__))
            return
        await _on_update(server, session, msg)
        # Drop the update before waiting for the next one: the reader hands a body buffer out
        # again only once nothing points into it, and a held 100 MB update would make it
        # allocate (and first-touch) a second buffer per client.
        del msg


async def _recv_or_closed(session: ClientSession) -> object | None:
    """Next message, or None as soon as the session is closed from elsewhere."""
    recv = asyncio.ensure_future(session.peer.recv())
    closed = asyncio.ensure_future(session.closed.wait())
    try:
        await asyncio.wait({recv, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if recv.done():
        return recv.result()
    recv.cancel()
    with contextlib.suppress(BaseException):
        await recv
    return None


async def _on_update(server: Server, session: ClientSession, update: Update) -> None:
    cid, now = session.client_id, time.monotonic()
    if server.stopping.is_set():  # after STOPPING nothing new is accepted (or Acked)
        # The server's own state, not the client's fault: a busy GSFS client may upload many
        # times while the drain finishes, and must get its Bye, not a misbehaviour Error.
        await _rejected(
            server, session, update, RejectCode.UNEXPECTED, "server is stopping", blame=False
        )
        return
    rounds = server.rounds
    if rounds is not None and not rounds.expects(cid, update.round):
        await _rejected(
            server,
            session,
            update,
            RejectCode.UNEXPECTED,
            f"round {update.round} is not open for {cid}",
        )
        return
    if rounds is not None:
        rounds.contributed(cid)  # reserve the slot now: the round must not close without it
    verdict = await server.engine_call(
        server.engine.judge_and_accept, cid, session.fingerprint, update, now
    )
    if verdict.code is not None:
        if rounds is not None:
            rounds.withdraw(cid)
        code = RejectCode(verdict.code.value)
        await _rejected(server, session, update, code, verdict.detail, norm=verdict.norm)
        return
    _accepted(server, session, update, verdict.norm)


def _accepted(
    server: Server, session: ClientSession, update: Update, norm: float | None = None
) -> None:
    nbytes = sum(int(t.nbytes) for t in update.tensors.values())
    stats = session.stats
    stats.accepted += 1
    stats.consecutive_rejects = 0
    stats.bytes_in += nbytes
    session.offer(Ack(update.update_id, server.engine.version))
    log.info(
        "update_accepted",
        client_id=session.client_id,
        update_id=update.update_id,
        round=update.round,
        base_version=update.base_version,
        model_version=server.engine.version,
        trigger=str(update.trigger),
        bytes=nbytes,
        norm=norm,
    )
    server.record_update(session, update, "accepted", None, nbytes, norm)
    server.wake.set()


async def _rejected(
    server: Server,
    session: ClientSession,
    update: Update,
    code: RejectCode,
    detail: str,
    *,
    blame: bool = True,
    norm: float | None = None,
) -> None:
    """Reject ``update``; with ``blame`` it counts toward disconnecting a misbehaving client."""
    nbytes = sum(int(t.nbytes) for t in update.tensors.values())
    stats = session.stats
    stats.rejected += 1
    if blame:
        stats.consecutive_rejects += 1
    log.warning(
        "update_rejected",
        client_id=session.client_id,
        update_id=update.update_id,
        round=update.round,
        base_version=update.base_version,
        model_version=server.engine.version,
        code=str(code),
        detail=detail,
        consecutive=stats.consecutive_rejects,
        norm=norm,
    )
    server.record_update(session, update, "rejected", str(code), nbytes, norm)
    session.offer(Reject(update.update_id, code, detail))
    if stats.consecutive_rejects >= server.settings.max_rejects:
        log.warning(
            "client_misbehaving", client_id=session.client_id, rejects=stats.consecutive_rejects
        )
        session.offer(Error(ErrorCode.PROTOCOL_VIOLATION, "too many rejected updates"))
        await session.close("too many rejected updates", flush_s=2.0)


async def _unregister(server: Server, session: ClientSession) -> None:
    if server.sessions.get(session.client_id) is session:
        del server.sessions[session.client_id]
        server.client_left(session)
    await session.close(session.close_reason or "disconnected")


async def _refuse(peer: Peer, msg: Error | Reject, code: ByeCode = ByeCode.UNSPECIFIED) -> None:
    with contextlib.suppress(Exception):
        await peer.send(msg)
    await _close(peer, getattr(msg, "detail", ""), code)


async def _close(peer: Peer, reason: str, code: ByeCode = ByeCode.UNSPECIFIED) -> None:
    with contextlib.suppress(Exception):
        await peer.close(reason, code)
