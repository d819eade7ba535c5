"""The client daemon: build the model, connect with backoff, run sessions, shut down cleanly.

Rules: start-up problems (settings, certificates, data) raise ``FedllmError`` with their exit
code before anything connects. READY=1 is sent once the model is built and the local state
restored (not after the first handshake: an edge host must come up while the server is away,
and systemd's start timeout must not turn a server outage into a restart loop). WATCHDOG=1 is
pinged from the event loop, so a stalled loop is what the watchdog catches. SIGTERM/SIGINT set
the stop event: the session persists, says Bye, and the daemon runs final_eval and exits 0. A
lost connection is retried with exponential backoff + jitter; a server Bye ends the daemon
(``on_server_bye = "exit"``) or is treated like a lost connection (``"reconnect"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl

import structlog

from fedllm_client.backoff import Backoff
from fedllm_client.runtime import ClientRuntime
from fedllm_client.session import Session
from fedllm_client.settings import ClientSettings
from fedllm_client.trainer import WorkerThread
from fedllm_core import systemd
from fedllm_core.errors import ExitCode, FedllmError
from fedllm_proto.errors import RemoteProtocolError
from fedllm_proto.tls import client_context
from fedllm_proto.transport import PeerClosed, connect

log = structlog.get_logger("fedllm.client")
CONNECT_TIMEOUT_S = 20.0
# What a lost or refused connection looks like (the server's fault or the network's); anything
# else, our own LocalProtocolError included, is a bug and ends the daemon (exit 1).
CONNECTION_ERRORS = (OSError, ssl.SSLError, TimeoutError, PeerClosed, RemoteProtocolError, EOFError)


class GaveUp(FedllmError):
    exit_code = ExitCode.UNAVAILABLE


def tls_context(settings: ClientSettings) -> ssl.SSLContext | None:
    if settings.insecure:
        log.warning(
            "insecure_mode",
            detail="plain TCP: no encryption, no server authentication. Lab use only.",
        )
        return None
    tls = settings.tls
    assert tls.ca and tls.cert and tls.key  # settings validation guarantees it
    return client_context(tls.ca, tls.cert, tls.key)


class ClientDaemon:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.worker = WorkerThread()
        self.backoff = Backoff(settings.backoff)
        self.runtime: ClientRuntime | None = None

    async def run(self) -> int:
        ctx = tls_context(self.settings)  # bad certificates fail here (exit 77)
        self._install_signals()
        watchdog = asyncio.create_task(_watchdog())
        try:
            self.runtime = await self.worker.run(ClientRuntime.open, self.settings)
            systemd.notify("READY=1\nSTATUS=connecting")
            log.info("client_started", state_dir=str(self.settings.state_dir))
            reason = await self._serve(ctx)
            await self._finish(reason)
            return 0
        finally:
            watchdog.cancel()
            self.worker.shutdown()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("stop_requested", signal=sig.name)
        systemd.notify("STOPPING=1")
        self.stop.set()

    async def _serve(self, ctx: ssl.SSLContext | None) -> str:
        """Sessions until the server says Bye (exit mode) or we are told to stop."""
        while not self.stop.is_set():
            reason = await self._one_session(ctx)
            if reason == "stopped" or (reason == "bye" and self.settings.on_server_bye == "exit"):
                return reason
            if self.backoff.exhausted():
                raise GaveUp(f"server unreachable after {self.backoff.failures} attempts")
            await self._sleep(self.backoff.next_delay())
        return "stopped"

    async def _one_session(self, ctx: ssl.SSLContext | None) -> str:
        assert self.runtime is not None
        server = self.settings.server
        log.info(
            "connecting", host=server.host, port=server.port, attempt=self.backoff.failures + 1
        )
        try:
            peer = await asyncio.wait_for(
                connect(
                    server.host, server.port, ssl_context=ctx, server_hostname=server.server_name
                ),
                timeout=CONNECT_TIMEOUT_S,
            )
        except CONNECTION_ERRORS as exc:
            log.warning("connect_failed", error=_describe(exc))
            return "lost"
        session = Session(peer, self.runtime, self.worker, self.stop)
        try:
            reason = await session.run()
        except CONNECTION_ERRORS as exc:
            log.warning("session_lost", error=_describe(exc))
            reason = "lost"
        finally:
            if session.welcome is not None:
                self.backoff.reset()  # it was up: start the delays from the beginning
            await _close_quietly(peer)
        systemd.notify(f"STATUS={reason}")
        return reason

    async def _sleep(self, delay: float) -> None:
        log.info("reconnect_wait", delay_s=round(delay, 3))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=delay)

    async def _finish(self, reason: str) -> None:
        rt = self.runtime
        assert rt is not None
        await self.worker.run(rt.persist)
        await self.worker.run(rt.final_eval)
        rt.close(reason)
        log.info("client_stopped", reason=reason)


async def _watchdog() -> None:
    interval = systemd.watchdog_interval_s()
    if interval is None:
        return
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def _close_quietly(peer: object) -> None:
    close = getattr(peer, "close", None)
    if close is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close("reconnect"), timeout=2.0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def run_daemon(settings: ClientSettings) -> int:
    """Run until Bye or SIGTERM; uvloop when available (as the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(ClientDaemon(settings).run())
    return uvloop.run(ClientDaemon(settings).run())
