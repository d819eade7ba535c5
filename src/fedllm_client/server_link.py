"""``ServerLink``: one connection to the server: handshake, then the strategy's loop until Bye,
stop or loss (the server's side of the same connection is its ``ClientSession``).

Rules: a reader task owns ``peer.recv()`` for the whole link (the transport answers
heartbeats inside it, so it never waits on training); it parks the newest GlobalModel in
``pending`` and queues TrainRequests. The work loop runs model work on the worker thread in
chunks and swaps a pending global model in between chunks. The link returns how it ended
(``"bye"``, with the server's Bye kept in ``bye``, or ``"stopped"``); a lost connection raises
(PeerClosed, ProtocolError, OSError) and the daemon reconnects. A refusal is fatal (``Refused``,
refusal.py): retrying cannot fix a fingerprint or a revoked certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import structlog

from fedllm_client.learner import Learner, PendingUpload
from fedllm_client.refusal import HandshakeRefused, Refused, tls_refusal
from fedllm_client.worker_thread import WorkerThread
from fedllm_core.privacy import federation_fingerprint, privacy_part
from fedllm_proto.errors import ErrorCode
from fedllm_proto.messages import (
    Ack,
    Bye,
    ByeCode,
    Error,
    GlobalModel,
    Heartbeat,
    Reject,
    TrainRequest,
    TriggerReason,
    Tuning,
    Update,
    Welcome,
)
from fedllm_proto.transport import Peer, PeerClosed

log = structlog.get_logger("fedllm.client")
SYNC_STRATEGIES = ("fedavg", "fedopt")
SEND_GRACE_S = 30.0  # how long a stop waits for an upload in flight to finish
# Errors that a retry cannot fix (a wrong fingerprint comes as a Reject).
FATAL_ERRORS = (ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNAUTHORIZED)


__all__ = ["HandshakeRefused", "ServerBye", "ServerLink"]


class ServerBye(Exception):
    """The server said Bye; ``bye.code`` says why (restarting, finished, revoked, ...)."""

    def __init__(self, bye: Bye) -> None:
        super().__init__(f"{bye.code.value}: {bye.reason}")
        self.bye = bye


class ServerLink:
    def __init__(
        self, peer: Peer, learner: Learner, worker: WorkerThread, stop: asyncio.Event
    ) -> None:
        self.peer, self.learner, self.worker, self.stop = peer, learner, worker, stop
        self.pending: GlobalModel | None = None
        self.global_arrived = asyncio.Event()
        self.requests: asyncio.Queue[TrainRequest] = asyncio.Queue()
        self.welcome: Welcome | None = None
        self._bytes_mark = 0
        self._send_lock = asyncio.Lock()
        self._unapplied: list[int] = []  # versions received since a global was last taken
        self.bye: Bye | None = None  # the server's Bye, when that is how the link ended

    # ------------------------------------------------------------------ entry point
    async def run(self) -> str:
        """Handshake and serve; returns "bye" or "stopped", raises on a lost connection."""
        try:
            welcome = self.welcome = await self._handshake()
        except ServerBye as said:  # e.g. the server is stopping: its code says for how long
            self.bye = said.bye
            return "bye"
        gsfs = welcome.strategy not in SYNC_STRATEGIES
        work = self._gsfs_loop() if gsfs else self._sync_loop()
        reader = asyncio.create_task(self._read(), name="reader")
        tasks = {
            reader,
            asyncio.create_task(work, name="work"),
            asyncio.create_task(self._keepalive(), name="keepalive"),
            asyncio.create_task(self.stop.wait(), name="stop"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if reader not in done and isinstance(_exception(done), PeerClosed):
                # a send failed because the server left: its Bye may be in the reader's inbox
                await asyncio.wait({reader}, timeout=1.0)
                done |= {reader} if reader.done() else set()
        finally:
            await self._cancel(tasks)
        finished = _most_telling(done)
        if finished.get_name() == "stop":
            await self._leave("shutdown", ByeCode.SHUTDOWN)
            return "stopped"
        exc = finished.exception()
        if isinstance(exc, ServerBye):
            self.bye = exc.bye
            await self._apply_pending(gsfs=gsfs)
            return "bye"
        if exc is not None:
            raise exc
        raise PeerClosed("session ended")  # pragma: no cover - loops only end by raising

    async def _cancel(self, tasks: set[asyncio.Task[Any]]) -> None:
        """Cancel the link's tasks, but never between an upload's send and its accounting."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SEND_GRACE_S):
                await self._send_lock.acquire()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handshake(self) -> Welcome:
        hello = self.learner.hello()
        local_dp = self.learner.settings.privacy.local_dp()  # C and σ must match the server's
        fp = federation_fingerprint(hello.model_fingerprint, local_dp)
        parts = {**hello.fingerprint_parts, "privacy": privacy_part(local_dp)}
        await self.peer.send(
            dataclasses.replace(hello, model_fingerprint=fp, fingerprint_parts=parts)
        )
        try:
            reply = await self.peer.recv()
        except PeerClosed as exc:
            _raise_if_refused(exc)
            raise
        if isinstance(reply, Reject):
            raise HandshakeRefused(f"server refused the handshake: {reply.code}: {reply.detail}")
        if isinstance(reply, Error):
            raise HandshakeRefused(f"server error at handshake: {reply.code.name}: {reply.detail}")
        if not isinstance(reply, Welcome):
            raise PeerClosed(f"expected welcome, got {type(reply).__name__}")
        if reply.strategy not in (*SYNC_STRATEGIES, "gsfs"):
            raise HandshakeRefused(
                f"server runs strategy {reply.strategy!r}, unknown to this client"
            )
        structlog.contextvars.bind_contextvars(
            client_id=reply.client_id, model_version=self.learner.state.base_version
        )
        self.learner.metrics.client = self.learner.metrics.client or reply.client_id
        self.learner.metrics.write(
            "connected",
            client_id=reply.client_id,
            strategy=reply.strategy,
            global_version=reply.global_version,
            protocol_version=reply.protocol_version,
            strategy_params=dict(reply.strategy_params),
        )
        log.info("connected", strategy=reply.strategy, global_version=reply.global_version)
        self._bytes_mark = self.peer.bytes_received
        return reply

    async def _leave(self, reason: str, code: ByeCode) -> None:
        await self.worker.run(self.learner.persist)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.peer.close(reason, code), timeout=5.0)

    async def _keepalive(self) -> None:
        """A heartbeat whenever nothing was sent for one heartbeat period.

        The transport heartbeats on its own, but its timer sleeps until the deadline it knew
        when it last armed (before Welcome: only its idle timeout), so a client busy training
        could go silent long enough for the server to drop it. Sent only when the transport
        sent nothing, so normally this adds no traffic."""
        assert self.welcome is not None
        last = -1
        while True:
            await asyncio.sleep(self.welcome.heartbeat_interval_s)
            if self.peer.bytes_sent == last and not self._send_lock.locked():
                await self.peer.send(Heartbeat())
            last = self.peer.bytes_sent

    # ------------------------------------------------------------------ receiving
    async def _read(self) -> None:
        while True:
            try:
                msg = await self.peer.recv()
            except PeerClosed as exc:
                _raise_if_refused(exc)
                raise
            self._count_down()
            self._dispatch(msg)
            del msg  # while waiting, hold nothing: the reader reuses a body buffer once unused

    def _count_down(self) -> None:
        # the one counter the loop thread bumps (a plain int add; persisted by the worker)
        received = self.peer.bytes_received
        self.learner.state.bytes_down += received - self._bytes_mark
        self._bytes_mark = received

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, GlobalModel):
            self.learner.metrics.write("broadcast_received", version=msg.version)
            self._unapplied.append(msg.version)
            self.pending = msg
            self.global_arrived.set()
        elif isinstance(msg, TrainRequest):
            self.requests.put_nowait(msg)
        elif isinstance(msg, Tuning):
            self.learner.retune(msg.version, msg.perf_delta, msg.kappa)
        elif isinstance(msg, Ack):
            self.learner.metrics.write(
                "ack", update_id=msg.update_id, global_version=msg.global_version
            )
        elif isinstance(msg, Reject):
            self.learner.metrics.write(
                "reject", update_id=msg.update_id, code=msg.code.value, detail=msg.detail
            )
            log.warning(
                "update_rejected", update_id=msg.update_id, code=msg.code.value, detail=msg.detail
            )
        elif isinstance(msg, Bye):  # pragma: no cover - the transport raises PeerClosed instead
            raise ServerBye(msg)
        elif isinstance(msg, Error):
            log.error("server_error", code=msg.code.name, detail=msg.detail)
        else:
            log.warning("unexpected_message", type=type(msg).__name__)

    async def _apply_pending(self, gsfs: bool) -> None:
        msg = self.pending
        self.global_arrived.clear()
        if msg is None:
            return
        # latest wins: versions that arrived during the same chunk are skipped, and said so
        for version in self._unapplied:
            if version != msg.version:
                self.learner.metrics.write("broadcast_superseded", version=version, by=msg.version)
        self._unapplied.clear()
        await self.worker.run(self.learner.apply_global, msg.version, msg.tensors, gsfs)
        # bound here, on the loop's context: worker calls run in copies of it
        structlog.contextvars.bind_contextvars(model_version=self.learner.state.base_version)
        if self.pending is msg:  # a newer one may have arrived meanwhile
            self.pending = None

    # ------------------------------------------------------------------ sending
    async def _send_update(self, pending: PendingUpload) -> None:
        async with self._send_lock:  # see _cancel: an upload sent is an upload counted
            before, started = self.peer.bytes_sent, time.perf_counter()
            await self._send(pending.update)
            nbytes, seconds = self.peer.bytes_sent - before, time.perf_counter() - started
            log.info(
                "update_sent",
                update_id=pending.update.update_id,
                trigger=pending.update.trigger.value,
                bytes=nbytes,
                base_version=pending.update.base_version,
                **_privacy_fields(pending),
            )
            await self.worker.run(self.learner.uploaded, pending, nbytes, seconds)

    async def _send(self, update: Update) -> None:
        # a dead link raises PeerClosed (the link ends, the daemon reconnects); a
        # LocalProtocolError here would be our own bug and ends the daemon
        await self.peer.send(update)

    # ------------------------------------------------------------------ strategies
    async def _sync_loop(self) -> None:
        """FedAvg / FedOpt: answer each TrainRequest with Δ after ``local_steps`` steps."""
        while True:
            request = await self.requests.get()
            if self.pending is None and self.learner.state.base is None:
                await self.global_arrived.wait()  # a round needs the model it is based on
            await self._apply_pending(gsfs=False)
            await self.worker.run(self.learner.reset_to_base)
            left = min(request.local_steps, self.learner.budget_left)
            if left < request.local_steps:
                log.warning("budget_short", requested=request.local_steps, granted=left)
            while left > 0:
                done = await self.worker.run(
                    self.learner.train_chunk, min(left, self.learner.settings.steps_per_chunk)
                )
                left = left - len(done) if done else 0
            if self.learner.state.base_version != request.base_version:
                log.warning(
                    "round_base_mismatch",
                    ours=self.learner.state.base_version,
                    theirs=request.base_version,
                )
            pending = await self.worker.run(
                self.learner.build_update, TriggerReason.ROUND, request.round, None, None
            )
            await self._send_update(pending)

    async def _gsfs_loop(self) -> None:
        """GSFS: train continuously, upload when a trigger fires, swap in each broadcast."""
        await self._first_global()
        while True:
            await self._apply_pending(gsfs=True)
            if self.learner.budget_left == 0:
                final = await self.worker.run(self.learner.final_upload)
                if final is not None:
                    await self._send_update(final)
                await self.global_arrived.wait()  # idle: only broadcasts left to apply
                continue
            pending = await self.worker.run(self.learner.gsfs_chunk)
            if pending is not None:
                await self._send_update(pending)
            elif self.learner.persist_due():
                await self.worker.run(self.learner.persist)

    async def _first_global(self) -> None:
        """Training needs a model: wait for the first GlobalModel unless we resume one."""
        assert self.welcome is not None
        if (
            self.learner.state.base is not None
            and self.welcome.global_version == self.learner.state.base_version
        ):
            return
        await self.global_arrived.wait()


def _privacy_fields(pending: PendingUpload) -> dict[str, float]:
    """Local DP: the delta's norm before clipping, its clip scale and the noise std per entry."""
    report = pending.compression.privacy if pending.compression is not None else None
    if report is None:
        return {}
    return {"dp_norm": report.norm, "dp_scale": report.scale, "dp_noise_std": report.noise_std}


def _exception(tasks: set[asyncio.Task[Any]]) -> BaseException | None:
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            return task.exception()
    return None


def _most_telling(done: set[asyncio.Task[Any]]) -> asyncio.Task[Any]:
    """Of the finished tasks, the one that explains the end: a server Bye or a refusal first,
    then stop, then whatever else failed."""

    def rank(task: asyncio.Task[Any]) -> int:
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, ServerBye | Refused):
            return 0
        return 1 if task.get_name() == "stop" else 2

    return min(done, key=rank)


def _raise_if_refused(exc: PeerClosed) -> None:
    """Turn the ends that are not a plain lost connection into their own exceptions: a Bye
    (ServerBye, its code decides what next), a fatal Error, a TLS refusal (Refused)."""
    if exc.bye is not None:
        log.info("server_bye", code=exc.bye.code.value, reason=exc.bye.reason)
        raise ServerBye(exc.bye) from exc
    if exc.error is not None and exc.error.code in FATAL_ERRORS:
        why = exc.error.code.name.lower()
        raise HandshakeRefused(f"server refused this client: {exc.reason}", why) from exc
    refusal = tls_refusal(exc)
    if refusal is not None:
        raise refusal from exc
