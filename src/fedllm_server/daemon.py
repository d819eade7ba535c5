"""The server daemon's lifecycle: start-up, the listening socket, signals, systemd, shutdown.

Lifecycle: build the central model (θ^0, fingerprint, test split) -> lock the state_dir (a
second server on it exits 75, `durable.lock`) -> with `[distill]`, the cloud teacher (cached
in the state_dir, else trained) and the distiller the engine refines θ^v with -> restore the
newest good checkpoint, let the strategy build its schedule from it, replay the pool log ->
encode the current global model -> listen (mutual TLS unless `insecure`) -> READY=1 -> serve until
SIGTERM/SIGINT or `stop_after_versions` -> STOPPING=1 -> finish the aggregation in flight (its
checkpoint included), write pending reports, flush outboxes, Bye to every client -> exit 0.
The Bye says why: `finished` when `stop_after_versions` was reached (clients exit),
`restarting` otherwise (SIGTERM/SIGINT, a failed task: clients reconnect with backoff).
SIGHUP reloads the revocation list and sends Bye `revoked` to every connected client whose
certificate is now on it. A checkpoint that could not be written (after its retries) is tried
again every `checkpoint_retry.max_delay_s` while serving, and once more at shutdown. Every
start-up step returns what the next needs; none sets state
for another as a side effect, so their order is the data flow. What runs once started:
`connections` (one task per client), `scheduler` (the scheduler and reporter tasks), over one
`state.ServerState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from fedllm_core.errors import CertificateError, ExitCode, FedllmError
from fedllm_core.observe_http import Endpoint
from fedllm_core.systemd import notify, watchdog_interval_s
from fedllm_proto.codec import limits_for_model
from fedllm_proto.tls import RevocationList, server_context
from fedllm_proto.transport import Peer, serve
from fedllm_server import connections, door, scheduler
from fedllm_server.broadcast import encode_global
from fedllm_server.distill.hook import Refiner
from fedllm_server.durable.checkpoint import CheckpointStore
from fedllm_server.durable.lock import StateDirLock
from fedllm_server.durable.poollog import PoolLog
from fedllm_server.engine import Engine, Loaded
from fedllm_server.evaluation import CentralModel
from fedllm_server.feedback.loop import FeedbackLoop
from fedllm_server.metrics_log import MetricsLog
from fedllm_server.observe import endpoint as observe_endpoint
from fedllm_server.observe.systemd_status import ServerStatusLine
from fedllm_server.schedule.base import RoundConfig, ScheduleContext
from fedllm_server.settings import ServerSettings
from fedllm_server.state import EngineThread, ServerState
from fedllm_server.strategies.registry import make_strategy

if TYPE_CHECKING:  # the distiller imports torch: only when [distill] is on
    from fedllm_server.distill.distiller import Opened

log = structlog.get_logger("fedllm.server")
FLUSH_ON_STOP_S = 10.0


class BindError(FedllmError):
    exit_code = ExitCode.OS


@dataclass(frozen=True)
class Restored:
    """The loop-side state, ready to serve, and what the start record reports."""

    state: ServerState
    loaded: Loaded
    replayed: int


@dataclass(frozen=True)
class Tls:
    """The listening socket's TLS: the context (None: plain TCP) and the client deny-list."""

    context: ssl.SSLContext | None
    revocation: RevocationList | None


# ---------------------------------------------------------------------------------- start-up


def make_engine(
    settings: ServerSettings, fingerprint: str, refiner: Refiner | None = None
) -> EngineThread:
    state_dir = settings.state_dir  # created (0700) and locked by the caller
    store = CheckpointStore(state_dir / "checkpoints")
    strategy = make_strategy(settings.strategy, settings.robust, settings.privacy)
    pool_log = PoolLog(state_dir / "pool.log")
    engine = Engine(
        strategy,
        settings.validation,
        fingerprint,
        store,
        pool_log,
        settings.checkpoint_retry,
        settings.norm_bound,
        settings.privacy,
        settings.broadcast,
        refiner,
    )
    return EngineThread(engine)


async def open_distillation(settings: ServerSettings, central: CentralModel) -> Opened | None:
    """`[distill]` on: the teacher (trained once, cached in state_dir) and the distiller,
    built in a worker thread (minutes on a first start) so the loop stays responsive."""
    if not settings.distill.enabled:
        return None
    from fedllm_server.distill.distiller import open_distiller  # torch work, only when asked

    return await asyncio.to_thread(open_distiller, settings, central.identity.labels)


def _teacher_record(state: ServerState, opened: Opened) -> None:
    report = opened.report
    state.metrics.write(
        "teacher",
        source=report.source,
        key=report.key[:32],
        rows=report.rows,
        steps=report.steps,
        loss=report.loss,
        seconds=report.seconds,
        transfer=len(opened.distiller.transfer),
        template=state.settings.distill.template,
        evaluation=opened.teacher_evaluation,
    )


async def restore(
    settings: ServerSettings, central: CentralModel, thread: EngineThread
) -> Restored:
    """Checkpoint -> the strategy's schedule -> pool-log replay -> encoded current model."""
    engine, now = thread.engine, time.monotonic()
    loaded = await thread.call(engine.load, central.initial_state(), now)
    for version, why in loaded.skipped:
        log.error("checkpoint_corrupted", model_version=version, detail=why)
    schedule = engine.strategy.make_schedule(_schedule_context(settings, loaded, now))
    if not loaded.from_checkpoint:  # version 0 is durable too: a restart reuses the same θ^0
        await thread.call(engine.checkpoint, schedule.snapshot(now), now)
    replay = await thread.call(engine.replay)
    if replay.torn_bytes:
        log.warning("pool_log_torn_tail", dropped_bytes=replay.torn_bytes)
    prepared = await encode_global(engine.version, engine.global_tensors)
    metrics = MetricsLog(settings.metrics_path)
    model_bytes = sum(int(t.nbytes) for t in engine.global_tensors.values())
    feedback = FeedbackLoop.open(
        settings.feedback, settings.strategy.name, settings.state_dir, model_bytes, metrics, now
    )
    state = ServerState(settings, central, thread, schedule, prepared, metrics, feedback)
    await scheduler.carry_out(state, schedule.replayed(replay.updates, now))
    log.info(
        "checkpoint_restored" if loaded.from_checkpoint else "checkpoint_initialised",
        model_version=engine.version,
        replayed_updates=len(replay.updates),
    )
    return Restored(state, loaded, len(replay.updates))


def _schedule_context(settings: ServerSettings, loaded: Loaded, now: float) -> ScheduleContext:
    r = settings.rounds
    return ScheduleContext(
        rounds=RoundConfig(r.fraction, r.min_clients, r.local_steps, r.deadline_s),
        seed=settings.seed,
        max_staleness=settings.validation.max_staleness,
        version=loaded.version,
        meta=loaded.meta,
        now=now,
    )


def tls_setup(settings: ServerSettings) -> Tls:
    """The server's TLS context and revocation list (both None in insecure mode)."""
    if settings.insecure:
        log.warning(
            "insecure_mode",
            detail="plain TCP, no client authentication: client names are TRUSTED as sent "
            "(anyone can claim one; at most insecure_names_per_address per host); "
            "loopback benchmarks only, never a real deployment",
        )
        return Tls(None, None)
    tls = settings.tls
    assert tls.ca is not None and tls.cert is not None and tls.key is not None
    revocation = None if tls.revocation_list is None else RevocationList(tls.revocation_list)
    return Tls(server_context(tls.ca, tls.cert, tls.key), revocation)


# ---------------------------------------------------------------------------------- running


@dataclass
class Running:
    """A started daemon: its port, and `wait()` for the exit code after it stops."""

    state: ServerState
    listener: asyncio.AbstractServer
    port: int
    tasks: list[asyncio.Task[Any]]
    watchdog: asyncio.Task[None]
    revocation: RevocationList | None
    _closing: set[asyncio.Task[None]]
    lock: StateDirLock
    endpoint: Endpoint | None = None  # `[metrics]`: /metrics, /status, the dashboard

    def reload_revocations(self) -> None:
        """SIGHUP: re-read the deny-list, then drop every connected client now on it."""
        if self.revocation is None:
            log.info("revocation_reload_skipped", detail="no revocation_list configured")
            return
        try:
            count = self.revocation.reload()
        except CertificateError as exc:
            log.error("revocation_reload_failed", error=str(exc))
            return
        log.info("revocation_reloaded", revoked=count)
        for task in connections.expel_revoked(self.state, self.revocation):
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def wait(self) -> int:
        await self.state.stopping.wait()
        try:
            await shutdown(self.state, self.listener, self.tasks)
        finally:
            self.lock.release()
            if self.endpoint is not None:
                await self.endpoint.close()
        self.watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.watchdog
        return int(ExitCode.FAILURE if self.state.failed else ExitCode.OK)


async def start(
    settings: ServerSettings, central: CentralModel, *, install_signals: bool = True
) -> Running:
    """Lock the state_dir, restore state, listen, announce READY; the returned handle runs
    until stopped. Raises StateDirBusy (exit 75) when another server holds the state_dir."""
    lock = StateDirLock(settings.state_dir)
    try:
        return await _start_locked(settings, central, lock, install_signals)
    except BaseException:
        lock.release()
        raise


async def _start_locked(
    settings: ServerSettings, central: CentralModel, lock: StateDirLock, install_signals: bool
) -> Running:
    opened = await open_distillation(settings, central)
    refiner = None if opened is None else opened.distiller
    restored = await restore(
        settings, central, make_engine(settings, central.identity.fingerprint, refiner)
    )
    state = restored.state
    if opened is not None:
        _teacher_record(state, opened)
    tls = tls_setup(settings)
    state.metrics.listeners.append(ServerStatusLine(state).on_record)  # systemd STATUS=
    try:
        endpoint = await observe_endpoint.attach(state)
    except OSError as exc:
        where = f"{settings.metrics.bind}:{settings.metrics.port}"
        raise BindError(f"cannot listen for metrics on {where}: {exc}") from exc

    async def on_peer(peer: Peer) -> None:
        await connections.handle_peer(state, peer)

    try:
        listener = await serve(
            on_peer,
            host=settings.host,
            port=settings.port,
            ssl_context=tls.context,
            timeouts=settings.timeouts,
            revocation=tls.revocation,
            limits=limits_for_model(state.engine.global_tensors),  # no Update past it
            admission=door.admission(settings),
            on_refused=door.Refusals(state.metrics),
        )
    except OSError as exc:
        if endpoint is not None:
            await endpoint.close()
        raise BindError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
    port = int(listener.sockets[0].getsockname()[1])
    _announce(state, restored, port, tls)
    tasks = [
        asyncio.create_task(scheduler.run(state), name="driver"),
        asyncio.create_task(scheduler.report(state), name="reporter"),
        asyncio.create_task(_retry_checkpoints(state), name="checkpoint-retry"),
    ]
    for task in tasks:
        task.add_done_callback(state.task_done)
    watchdog = asyncio.create_task(_watchdog(), name="watchdog")
    running = Running(state, listener, port, tasks, watchdog, tls.revocation, set(), lock, endpoint)
    if install_signals:
        _install_signals(running)
    return running


def _announce(state: ServerState, restored: Restored, port: int, tls: Tls) -> None:
    settings = state.settings
    state.metrics.write(
        "start",
        version=restored.loaded.version,
        port=port,
        strategy=settings.strategy.name,
        restored=restored.loaded.from_checkpoint,
        replayed_updates=restored.replayed,
        fingerprint=state.fingerprint,
    )
    log.info(
        "server_listening",
        host=settings.host,
        port=port,
        tls=tls.context is not None,
        strategy=settings.strategy.name,
        model_version=state.engine.version,
        fingerprint=state.fingerprint,  # what every client's Hello must carry
    )
    notify("READY=1")


def _install_signals(running: Running) -> None:
    loop = asyncio.get_running_loop()
    for sig, name in ((signal.SIGTERM, "sigterm"), (signal.SIGINT, "sigint")):
        loop.add_signal_handler(sig, running.state.request_stop, name)
    loop.add_signal_handler(signal.SIGHUP, running.reload_revocations)


async def serve_forever(settings: ServerSettings, central: CentralModel) -> int:
    """Run the daemon until it is told to stop; returns the process exit code."""
    running = await start(settings, central)
    return await running.wait()


async def _retry_checkpoints(state: ServerState) -> None:
    """Try a checkpoint that failed all its retries again now and then, until it is saved."""
    interval = max(0.1, state.settings.checkpoint_retry.max_delay_s)
    while not state.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stopping.wait(), interval)
        if state.engine.checkpoint_pending and not state.stopping.is_set():
            await state.engine_call(state.engine.flush_checkpoint)


async def _watchdog() -> None:
    """WATCHDOG=1 from the event loop itself: a stalled loop stops the pings."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------- shutdown


async def shutdown(
    state: ServerState, listener: asyncio.AbstractServer, tasks: list[asyncio.Task[Any]]
) -> None:
    notify("STOPPING=1")
    listener.close()
    drive_task, report_task, retry_task = tasks
    with contextlib.suppress(Exception):  # already logged by task_done
        await drive_task  # finishes an aggregation in flight, checkpoint included
    with contextlib.suppress(Exception):
        await retry_task
    state.reports.put_nowait(None)
    with contextlib.suppress(Exception):
        await report_task
    sessions = list(state.sessions.values())
    await asyncio.gather(
        *(
            connections.farewell(s, state.stop_reason, state.stop_code, FLUSH_ON_STOP_S)
            for s in sessions
        ),
        return_exceptions=True,
    )
    if not await state.engine_call(state.engine.flush_checkpoint):  # a last try
        log.error("checkpoint_unsaved_at_stop", model_version=state.engine.version)
    await state.engine_call(state.engine.close)
    state.metrics.write(
        "stop",
        reason=state.stop_reason,
        version=state.engine.version,
        checkpoint_failures=state.engine.checkpoint_attempts.failures,
    )
    state.metrics.close()
    state.close_threads()
    log.info(
        "server_stopped",
        reason=state.stop_reason,
        model_version=state.engine.version,
        clients_said_bye=len(sessions),
        bye=state.stop_code.value,
    )
