"""One task per connection: handshake, then read the client's messages until it goes away.

Rules: the handshake is Hello -> (fingerprint check) -> Welcome -> current GlobalModel; a wrong
fingerprint gets `Reject(fingerprint_mismatch)` and Bye `refused` (under local DP Hello's
fingerprint also carries C and σ, `federation_fingerprint`: a client that would privatise
differently, or not at all, is refused the same way; the session then holds the model's); a
Hello while the server stops gets a Bye with the stop's code (`restarting` or `finished`). The
client id is the certificate's CN (the transport's `peer_id`); only in insecure mode does
Hello's `client_name` name the client, and names are guarded there: a name connected from
another host is refused (`name_in_use`), and one host holds at most `insecure_names_per_address`
names (`too_many_names`), so spoofed or Sybil names cannot make a quorum alone. A second
connection with the same id (in insecure mode: from the same host) replaces the first: the old
session is closed (`replaced`) before the new one is registered. Updates are judged and accepted
in the engine thread (first the schedule must expect it; then exactly one of its
`accepted`/`refused` follows the verdict, whatever happens); the Ack is queued only after the
update is durable. A client whose updates keep being rejected (`max_rejects` in a row) gets an
Error and is disconnected. SIGHUP's revocations end here too (`expel_revoked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from fedllm_core.privacy import (
    differing_parts,
    federation_fingerprint,
    mismatch_detail,
    privacy_part,
)
from fedllm_proto.errors import ErrorCode
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
from fedllm_proto.tls import RevocationList
from fedllm_proto.transport import Peer, PeerClosed
from fedllm_server import door, scheduler
from fedllm_server.broadcast import model_for
from fedllm_server.session import ClientSession
from fedllm_server.state import ServerState
from fedllm_server.tensors import nbytes
from fedllm_server.validation import Sender

log = structlog.get_logger("fedllm.server")


async def handle_peer(state: ServerState, peer: Peer) -> None:
    """The transport's per-connection callback."""
    session = await _handshake(state, peer)
    if session is None:
        return
    try:
        await _read_loop(state, session)
    except PeerClosed as exc:
        _log_link_end(session.client_id, exc)
    finally:
        await _unregister(state, session)


def _log_link_end(client_id: str, exc: PeerClosed) -> None:
    if exc.kind == "idle":
        log.info("client_idle_timeout", client_id=client_id)
    elif exc.kind == "protocol":
        code = exc.code.name if exc.code is not None else None
        log.warning("client_protocol_error", client_id=client_id, code=code, detail=exc.reason)
    else:
        log.info("client_disconnected", client_id=client_id, how=exc.kind, reason=exc.reason)


async def _handshake(state: ServerState, peer: Peer) -> ClientSession | None:
    timeout = state.settings.timeouts.hello_s
    try:
        hello = await asyncio.wait_for(peer.recv(), timeout)
    except (PeerClosed, TimeoutError) as exc:  # TimeoutError: no Hello within the deadline
        log.info("handshake_failed", address=peer.address, reason=repr(exc))
        await _close(peer, "handshake failed")
        return None
    if not isinstance(hello, Hello):
        await _refuse(peer, Error(ErrorCode.UNEXPECTED_MESSAGE, "expected hello"))
        return None
    client_id = _identity(state, peer, hello)
    local_dp = state.settings.privacy.local_dp()
    expected = federation_fingerprint(state.fingerprint, local_dp)
    if hello.model_fingerprint != expected:
        ours = {**state.fingerprint_parts, "privacy": privacy_part(local_dp)}
        differing = differing_parts(ours, hello.fingerprint_parts)
        log.warning(
            "client_fingerprint_mismatch",
            client_id=client_id,
            theirs=hello.model_fingerprint[:16],
            ours=expected[:16],
            privacy=state.settings.privacy.mode,
            differing=differing,
        )
        detail = mismatch_detail(differing)
        reject = Reject("", RejectCode.FINGERPRINT_MISMATCH, detail)
        await _refuse(peer, reject, ByeCode.REFUSED)
        return None
    refusal = _insecure_name_refusal(state, peer, client_id)
    if refusal is not None:
        log.warning("peer_refused", address=peer.address, client_id=client_id, reason=refusal)
        door.notify_refused(state.metrics, refusal, peer.address)
        error = Error(ErrorCode.UNAUTHORIZED, f"{refusal}: client name {client_id!r}")
        await _refuse(peer, error, ByeCode.REFUSED)
        return None
    if state.stopping.is_set():
        # the Bye says whether to come back (restarting) or not (finished)
        await _close(peer, "server is shutting down", state.stop_code)
        return None
    return await _admit(state, peer, hello, client_id)


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]  # "host:port" (an IPv6 host keeps its colons)


def _insecure_name_refusal(state: ServerState, peer: Peer, client_id: str) -> str | None:
    """In insecure mode nothing proves a name: refuse taking over another host's name, and
    more distinct names per host than configured (None: admitted)."""
    if not state.settings.insecure:
        return None
    host = _host(peer.address)
    held = state.sessions.get(client_id)
    if held is not None and _host(held.peer.address) != host:
        return "name_in_use"
    names = {cid for cid, s in state.sessions.items() if _host(s.peer.address) == host}
    names.discard(client_id)  # a reconnect from the same host replaces its old session
    if len(names) >= state.settings.insecure_names_per_address:
        return "too_many_names"
    return None


def _identity(state: ServerState, peer: Peer, hello: Hello) -> str:
    if state.settings.insecure and hello.client_name:
        return hello.client_name
    return peer.peer_id or peer.address


async def _admit(state: ServerState, peer: Peer, hello: Hello, client_id: str) -> ClientSession:
    old = state.sessions.pop(client_id, None)
    if old is not None:
        log.info("client_replaced", client_id=client_id, old_address=old.peer.address)
        state.schedule.left(client_id)  # the new connection re-joins below (or never)
        await old.close("replaced by a new connection")
    session = ClientSession(
        peer,
        client_id,
        state.fingerprint,  # what Hello carried, less the privacy settings checked above
        hello.sample_count,
        state.settings.send_queue,
        bulk=state.bulk_gate,
        capabilities=frozenset(hello.capabilities),
    )
    await peer.send(_welcome(state, peer, client_id))  # registered only once this worked
    state.sessions[client_id] = session
    session.start()
    # the current global model: a reconnect resynchronises
    session.offer(model_for(session, state.prepared, state.prepared_lossy))
    if state.feedback is not None:
        state.feedback.welcome(session)  # the trigger thresholds in force, after the model
    await scheduler.carry_out(state, state.schedule.joined(client_id, time.monotonic()))
    state.wake.set()
    log.info(
        "client_connected",
        client_id=client_id,
        address=peer.address,
        model_version=state.engine.version,
        last_global_version=hello.last_global_version,
        sample_count=hello.sample_count,
    )
    return session


def _welcome(state: ServerState, peer: Peer, client_id: str) -> Welcome:
    strategy = state.settings.strategy
    params = {
        k: v for k, v in strategy.model_dump().items() if isinstance(v, bool | int | float | str)
    }
    version = getattr(peer, "protocol_version", PROTOCOL_VERSIONS[-1])
    return Welcome(
        protocol_version=version,
        client_id=client_id,
        strategy=strategy.name,
        strategy_params=params,
        global_version=state.engine.version,
        heartbeat_interval_s=state.settings.heartbeat_interval_s,
    )


async def _read_loop(state: ServerState, session: ClientSession) -> None:
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
        await _on_update(state, session, msg)
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
    # asyncio.wait never raises what recv raised, but a cancel of *this* task still propagates
    # (awaiting recv under suppress(BaseException) swallowed it); then mark recv's outcome read.
    await asyncio.wait({recv})
    if not recv.cancelled():
        recv.exception()
    return None


async def _on_update(state: ServerState, session: ClientSession, update: Update) -> None:
    cid, now = session.client_id, time.monotonic()
    if state.stopping.is_set():  # after STOPPING nothing new is accepted (or Acked)
        # The server's own state, not the client's fault: a busy GSFS client may upload many
        # times while the drain finishes, and must get its Bye, not a misbehaviour Error.
        await _rejected(
            state, session, update, RejectCode.UNEXPECTED, "server is stopping", blame=False
        )
        return
    schedule = state.schedule
    if not schedule.expects(cid, update.round):
        detail = f"round {update.round} is not open for {cid}"
        await _rejected(state, session, update, RejectCode.UNEXPECTED, detail)
        return
    sender = Sender(cid, session.fingerprint)
    try:  # `expects` reserved a place: exactly one of accepted/refused must follow
        verdict = await state.engine_call(state.engine.accept, sender, update, now, time.time())
    except BaseException:
        schedule.refused(cid)
        raise
    if verdict.update is None:
        schedule.refused(cid)
        assert verdict.code is not None
        code = RejectCode(verdict.code.value)
        await _rejected(
            state, session, update, code, verdict.detail, blame=verdict.blame, norm=verdict.norm
        )
        return
    actions = schedule.accepted(verdict.update, now)
    _accepted(state, session, update, verdict.update.norm)
    await scheduler.carry_out(state, actions)  # a fold is submitted before anything else
    state.wake.set()


def _accepted(state: ServerState, session: ClientSession, update: Update, norm: float) -> None:
    size = nbytes(update.tensors)
    stats = session.stats
    stats.accepted += 1
    stats.consecutive_rejects = 0
    stats.bytes_in += size
    session.offer(Ack(update.update_id, state.engine.version))
    log.info(
        "update_accepted",
        client_id=session.client_id,
        update_id=update.update_id,
        round=update.round,
        base_version=update.base_version,
        model_version=state.engine.version,
        trigger=str(update.trigger),
        bytes=size,
        norm=norm,
    )
    _record_update(state, session, update, "accepted", None, size, norm)


async def _rejected(
    state: ServerState,
    session: ClientSession,
    update: Update,
    code: RejectCode,
    detail: str,
    *,
    blame: bool = True,
    norm: float | None = None,
) -> None:
    """Reject ``update``; with ``blame`` it counts toward disconnecting a misbehaving client."""
    size = nbytes(update.tensors)
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
        model_version=state.engine.version,
        code=str(code),
        detail=detail,
        consecutive=stats.consecutive_rejects,
        norm=norm,
    )
    _record_update(state, session, update, "rejected", str(code), size, norm)
    session.offer(Reject(update.update_id, code, detail))
    if stats.consecutive_rejects >= state.settings.max_rejects:
        log.warning(
            "client_misbehaving", client_id=session.client_id, rejects=stats.consecutive_rejects
        )
        session.offer(Error(ErrorCode.PROTOCOL_VIOLATION, "too many rejected updates"))
        await session.close("too many rejected updates", flush_s=2.0)


async def _unregister(state: ServerState, session: ClientSession) -> None:
    if state.sessions.get(session.client_id) is session:
        del state.sessions[session.client_id]
        state.schedule.left(session.client_id)
        state.wake.set()
    await session.close(session.close_reason or "disconnected")


async def _refuse(peer: Peer, msg: Error | Reject, code: ByeCode = ByeCode.UNSPECIFIED) -> None:
    with contextlib.suppress(Exception):
        await peer.send(msg)
    await _close(peer, getattr(msg, "detail", ""), code)


async def _close(peer: Peer, reason: str, code: ByeCode = ByeCode.UNSPECIFIED) -> None:
    with contextlib.suppress(Exception):
        await peer.close(reason, code)


def _record_update(
    state: ServerState,
    session: ClientSession,
    update: Update,
    outcome: str,
    code: str | None,
    size: int,
    norm: float | None,
) -> None:
    state.metrics.write(
        "update",
        client_id=session.client_id,
        update_id=update.update_id,
        outcome=outcome,
        code=code,
        bytes=size,
        trigger=str(update.trigger),
        base_version=update.base_version,
        round=update.round,
        sample_count=update.sample_count,
        global_version=state.engine.version,
        client_metrics=dict(update.metrics),
        norm=norm,  # the door's ‖Δ‖₂; null only when the tensor checks did not run
    )


async def farewell(session: ClientSession, reason: str, code: ByeCode, flush_s: float) -> None:
    """Flush what is queued (bounded), then say Bye with ``code`` and close the session.

    The Bye goes out on the peer first, while the session's writer idles between messages
    (the peer's write lock keeps it from ever splitting one); the session's own close then
    finds the conversation ended and only stops its writer."""
    if flush_s > 0:
        await session.flush(flush_s)
    with contextlib.suppress(Exception):
        await session.peer.close(reason, code)
    await session.close(reason)


def expel_revoked(state: ServerState, revocation: RevocationList) -> list[asyncio.Task[None]]:
    """Connected clients whose certificate is now revoked get Bye `revoked` and are dropped
    (the transport's deny-list only guards new connections); returns the closing tasks."""
    tasks = []
    for session in list(state.sessions.values()):
        serial = session.peer.certificate_serial
        if serial is not None and revocation.is_serial_revoked(serial):
            log.warning("client_revoked", client_id=session.client_id, serial=hex(serial))
            closing = farewell(session, "certificate revoked", ByeCode.REVOKED, flush_s=0.0)
            tasks.append(asyncio.get_running_loop().create_task(closing))
    return tasks
