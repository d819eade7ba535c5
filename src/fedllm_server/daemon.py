"""The server daemon: start-up, the listening socket, signals, systemd, orderly shutdown.

Lifecycle: build the central model (θ^0, fingerprint, test split) -> restore the newest good
checkpoint and replay the pool log -> encode the current global model -> listen (mutual TLS
unless `insecure`) -> READY=1 -> serve until SIGTERM/SIGINT or `stop_after_versions` ->
STOPPING=1 -> finish the aggregation in flight (its checkpoint included), write pending
reports, flush outboxes, Bye to every client -> exit 0. The Bye says why: `finished` when
`stop_after_versions` was reached (clients exit), `restarting` otherwise (SIGTERM/SIGINT, a
failed task: clients reconnect with backoff). SIGHUP reloads the revocation list and sends
Bye `revoked` to every connected client whose certificate is now on it.
Threads: one engine thread (validation, log, aggregation, checkpoint) and one evaluation
thread; the event loop only moves bytes and makes decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from fedllm_core.errors import CertificateError, ExitCode, FedllmError
from fedllm_core.systemd import notify, watchdog_interval_s
from fedllm_proto.codec import limits_for_model
from fedllm_proto.messages import ByeCode, Update
from fedllm_proto.tls import RevocationList, server_context
from fedllm_proto.transport import PreparedMessage, serve
from fedllm_server import driver, peers
from fedllm_server.broadcast import encode_global
from fedllm_server.coordinator import RoundConfig, SyncRounds
from fedllm_server.durable.checkpoint import CheckpointStore
from fedllm_server.durable.poollog import PoolLog
from fedllm_server.engine import Engine, RestoreReport
from fedllm_server.evaluation import CentralModel
from fedllm_server.metrics_log import MetricsLog
from fedllm_server.session import ClientSession
from fedllm_server.settings import ServerSettings

log = structlog.get_logger("fedllm.server")
T = TypeVar("T")
FLUSH_ON_STOP_S = 10.0


class BindError(FedllmError):
    exit_code = ExitCode.OS


class Server:
    """Shared state of one daemon process (sessions, engine, coordinator, reporting)."""

    def __init__(self, settings: ServerSettings, central: CentralModel) -> None:
        self.settings = settings
        self.central = central
        self.fingerprint = central.identity.fingerprint
        state_dir = settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.engine = Engine(
            settings.strategy,
            settings.validation,
            self.fingerprint,
            CheckpointStore(state_dir / "checkpoints"),
            PoolLog(state_dir / "pool.log"),
            time.monotonic(),
        )
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._eval_thread = ThreadPoolExecutor(1, thread_name_prefix="evaluation")
        self.sessions: dict[str, ClientSession] = {}
        self.rounds: SyncRounds | None = None
        self.prepared: PreparedMessage | None = None
        self.metrics = MetricsLog(settings.metrics_path)
        self.reports: asyncio.Queue[driver.Published | None] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self.stop_code = ByeCode.RESTARTING  # what the Bye tells clients: come back, or not
        self.revocation: RevocationList | None = None
        self._closing: set[asyncio.Task[None]] = set()  # sessions being expelled (revoked)
        self.failed = False

    def task_done(self, task: asyncio.Task[Any]) -> None:
        """A driver/reporter task must never end on its own: if it died, stop (exit 1)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("server_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
        self.failed = True
        self.request_stop(f"{task.get_name()} failed")

    # ------------------------------------------------------------------ helpers for peers

    async def engine_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the engine thread (serialises every touch of the engine state)."""
        return await asyncio.get_running_loop().run_in_executor(self._engine_thread, fn, *args)

    async def evaluate(self, tensors: dict[str, Any], version: int) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        evaluate = self.central.evaluate
        return await loop.run_in_executor(self._eval_thread, evaluate, tensors, version)

    async def client_joined(self, session: ClientSession) -> None:
        await self.engine_call(self.engine.enroll, session.client_id)
        if self.rounds is not None:
            owed = self.rounds.connect(session.client_id, time.monotonic())
            if owed is not None:
                driver.start_round(self, owed)
        self.wake.set()

    def client_left(self, session: ClientSession) -> None:
        if self.rounds is not None:
            self.rounds.disconnect(session.client_id)
        self.wake.set()

    def record_update(
        self,
        session: ClientSession,
        update: Update,
        outcome: str,
        code: str | None,
        nbytes: int,
        norm: float | None = None,
    ) -> None:
        self.metrics.write(
            "update",
            client_id=session.client_id,
            update_id=update.update_id,
            outcome=outcome,
            code=code,
            bytes=nbytes,
            trigger=str(update.trigger),
            base_version=update.base_version,
            round=update.round,
            sample_count=update.sample_count,
            global_version=self.engine.version,
            client_metrics=dict(update.metrics),
            norm=norm,  # the door's ‖Δ‖₂; null only when the tensor checks did not run
        )

    def request_stop(self, reason: str, code: ByeCode = ByeCode.RESTARTING) -> None:
        """Stop serving; ``code`` is what every client's Bye says (``finished``: do not return)."""
        if not self.stopping.is_set():
            self.stop_reason, self.stop_code = reason, code
            self.stopping.set()  # before logging: a broken log pipe must not block the stop
            self.wake.set()
            log.info(
                "server_stopping", reason=reason, bye=code.value, model_version=self.engine.version
            )

    # ------------------------------------------------------------------ start-up

    async def restore(self) -> RestoreReport:
        initial = self.central.initial_state()
        report = await self.engine_call(self.engine.restore, initial, time.monotonic())
        for version, why in report.skipped:
            log.error("checkpoint_corrupted", model_version=version, detail=why)
        if report.torn_bytes:
            log.warning("pool_log_torn_tail", dropped_bytes=report.torn_bytes)
        log.info(
            "checkpoint_restored" if report.from_checkpoint else "checkpoint_initialised",
            model_version=report.version,
            replayed_updates=report.replayed,
        )
        if self.settings.is_sync:
            cfg = self.settings.rounds
            rc = RoundConfig(cfg.fraction, cfg.min_clients, cfg.local_steps, cfg.deadline_s)
            self.rounds = SyncRounds(
                rc,
                _rng(self.settings.seed, report.version),
                version=report.version,
                next_round=self.engine.next_round,
            )
            if report.resumed_round is not None:
                self.rounds.resume(report.resumed_round, report.resumed_clients)
        self.prepared = await encode_global(report.version, self.engine.global_tensors)
        return report

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.settings.insecure:
            log.warning(
                "insecure_mode",
                detail="plain TCP, no client authentication: "
                "loopback benchmarks only, never a real deployment",
            )
            return None
        tls = self.settings.tls
        assert tls.ca is not None and tls.cert is not None and tls.key is not None
        if tls.revocation_list is not None:
            self.revocation = RevocationList(tls.revocation_list)
        return server_context(tls.ca, tls.cert, tls.key)

    def reload_revocations(self) -> None:
        if self.revocation is None:
            log.info("revocation_reload_skipped", detail="no revocation_list configured")
            return
        try:
            count = self.revocation.reload()
        except CertificateError as exc:
            log.error("revocation_reload_failed", error=str(exc))
            return
        log.info("revocation_reloaded", revoked=count)
        self.expel_revoked()

    def expel_revoked(self) -> None:
        """Connected clients whose certificate is now revoked get Bye `revoked` and are dropped
        (the transport's deny-list only guards new connections)."""
        revocation = self.revocation
        assert revocation is not None
        for session in list(self.sessions.values()):
            serial = session.peer.certificate_serial
            if serial is not None and revocation.is_serial_revoked(serial):
                log.warning("client_revoked", client_id=session.client_id, serial=hex(serial))
                task = asyncio.get_running_loop().create_task(
                    farewell(session, "certificate revoked", ByeCode.REVOKED, flush_s=0.0)
                )
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(
        self, listener: asyncio.AbstractServer, tasks: list[asyncio.Task[Any]]
    ) -> None:
        notify("STOPPING=1")
        listener.close()
        drive_task, report_task = tasks
        with contextlib.suppress(Exception):  # already logged by task_done
            await drive_task  # finishes an aggregation in flight, checkpoint included
        self.reports.put_nowait(None)
        with contextlib.suppress(Exception):
            await report_task
        sessions = list(self.sessions.values())
        await asyncio.gather(
            *(farewell(s, self.stop_reason, self.stop_code, FLUSH_ON_STOP_S) for s in sessions),
            return_exceptions=True,
        )
        await self.engine_call(self.engine.close)
        self.metrics.write("stop", reason=self.stop_reason, version=self.engine.version)
        self.metrics.close()
        self._engine_thread.shutdown()
        self._eval_thread.shutdown()
        log.info(
            "server_stopped",
            reason=self.stop_reason,
            model_version=self.engine.version,
            clients_said_bye=len(sessions),
            bye=self.stop_code.value,
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


def _rng(seed: int, version: int) -> random.Random:
    return random.Random(seed * 1_000_003 + version)  # a restart does not replay old draws


@dataclass
class Running:
    """A started daemon: its port, and `wait()` for the exit code after it stops."""

    server: Server
    listener: asyncio.AbstractServer
    port: int
    tasks: list[asyncio.Task[Any]]
    watchdog: asyncio.Task[None]

    async def wait(self) -> int:
        await self.server.stopping.wait()
        await self.server.shutdown(self.listener, self.tasks)
        self.watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.watchdog
        return int(ExitCode.FAILURE if self.server.failed else ExitCode.OK)


async def start(
    settings: ServerSettings, central: CentralModel, *, install_signals: bool = True
) -> Running:
    """Restore state, listen, announce READY; the returned handle runs until stopped."""
    server = Server(settings, central)
    report = await server.restore()
    ctx = server.ssl_context()

    async def on_peer(peer: Any) -> None:
        await peers.handle_peer(server, peer)

    try:
        listener = await serve(
            on_peer,
            host=settings.host,
            port=settings.port,
            ssl_context=ctx,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            idle_timeout_s=settings.idle_timeout_s,
            revocation=server.revocation,
            limits=limits_for_model(server.engine.global_tensors),  # no Update past it
        )
    except OSError as exc:
        raise BindError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    port = int(listener.sockets[0].getsockname()[1])
    if install_signals:
        _install_signals(server)
    server.metrics.write(
        "start",
        version=report.version,
        port=port,
        strategy=settings.strategy.name,
        restored=report.from_checkpoint,
        replayed_updates=report.replayed,
        fingerprint=server.fingerprint,
    )
    log.info(
        "server_listening",
        host=settings.host,
        port=port,
        tls=ctx is not None,
        strategy=settings.strategy.name,
        model_version=report.version,
    )
    notify("READY=1")
    tasks = [
        asyncio.create_task(driver.drive(server), name="driver"),
        asyncio.create_task(driver.report(server), name="reporter"),
    ]
    for task in tasks:
        task.add_done_callback(server.task_done)
    watchdog = asyncio.create_task(_watchdog(), name="watchdog")
    return Running(server, listener, port, tasks, watchdog)


def _install_signals(server: Server) -> None:
    loop = asyncio.get_running_loop()
    for sig, name in ((signal.SIGTERM, "sigterm"), (signal.SIGINT, "sigint")):
        loop.add_signal_handler(sig, server.request_stop, name)
    loop.add_signal_handler(signal.SIGHUP, server.reload_revocations)


async def serve_forever(settings: ServerSettings, central: CentralModel) -> int:
    """Run the daemon until it is told to stop; returns the process exit code."""
    running = await start(settings, central)
    return await running.wait()


async def _watchdog() -> None:
    """WATCHDOG=1 from the event loop itself: a stalled loop stops the pings."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
