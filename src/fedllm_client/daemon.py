"""The client daemon: build the model, connect with backoff, run server links, shut down cleanly.

Rules: start-up problems (settings, certificates, data) raise ``FedllmError`` with their exit
code before anything connects. READY=1 is sent once the model is built and the local state
restored (not after the first handshake: an edge host must come up while the server is away,
and systemd's start timeout must not turn a server outage into a restart loop). WATCHDOG=1 is
pinged from the event loop, so a stalled loop is what the watchdog catches. SIGTERM/SIGINT set
the stop event: the server link persists, says Bye, and the daemon runs final_eval and exits 0. A
lost connection is retried with exponential backoff + jitter. The server's Bye code decides
the rest: ``finished`` ends the daemon (exit 0, with ``on_server_bye = "exit"``), ``revoked``
/ ``refused`` end it with exit 78 (as does a TLS refusal of our certificate; a server
certificate we reject: 77), anything else (``restarting``, no code) is a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl

import structlog

from fedllm_client import observe
from fedllm_client.backoff import Backoff
from fedllm_client.learner import Learner
from fedllm_client.refusal import Refused, ServerCertificateRejected, bye_refusal, tls_refusal
from fedllm_client.server_link import ServerLink
from fedllm_client.settings import ClientSettings
from fedllm_client.worker_thread import WorkerThread
from fedllm_core import systemd
from fedllm_core.errors import ExitCode, FedllmError
from fedllm_core.observe_http import Endpoint
from fedllm_proto.messages import Bye, ByeCode
from fedllm_proto.timeouts import CLIENT
from fedllm_proto.tls import client_context
from fedllm_proto.transport import PeerClosed, connect

log = structlog.get_logger("fedllm.client")
# The link's deadlines (fedllm_proto.timeouts): TCP + TLS may take up to 20 s over a slow
# edge uplink; the heartbeat interval comes from the server's Welcome.
LINK_TIMEOUTS = CLIENT.but(tls_handshake_s=20.0)
# What a lost or refused connection looks like (the server's fault or the network's): connect()
# raises the OS/TLS/timeout errors, a live Peer only PeerClosed. Anything else, our own
# LocalProtocolError included, is a bug and ends the daemon (exit 1).
CONNECTION_ERRORS = (OSError, ssl.SSLError, TimeoutError, PeerClosed, EOFError)


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
        self.learner: Learner | None = None

    async def run(self) -> int:
        ctx = tls_context(self.settings)  # bad certificates fail here (exit 77)
        self._install_signals()
        watchdog = asyncio.create_task(_watchdog())
        endpoint: Endpoint | None = None
        try:
            self.learner = await self.worker.run(Learner.open, self.settings)
            endpoint = await observe.attach(self.learner)  # [metrics]; None when off
            systemd.notify("READY=1\nSTATUS=connecting")
            log.info("client_started", state_dir=str(self.settings.state_dir))
            try:
                reason = await self._serve(ctx)
            except (Refused, ServerCertificateRejected) as exc:
                await self._refused(exc)
                raise
            await self._finish(reason)
            return 0
        finally:
            watchdog.cancel()
            if endpoint is not None:
                await endpoint.close()
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
        """Server links until the server says the federation is finished, or we are told to stop."""
        while not self.stop.is_set():
            reason, bye = await self._one_link(ctx)
            if reason == "stopped" or (bye is not None and self._ends_with(bye)):
                return reason
            if self.backoff.exhausted():
                raise GaveUp(f"server unreachable after {self.backoff.failures} attempts")
            await self._sleep(self.backoff.next_delay())
        return "stopped"

    def _ends_with(self, bye: Bye) -> bool:
        """Whether the server's Bye ends the daemon (True) or is a connection to re-open."""
        refusal = bye_refusal(bye)
        if refusal is not None:
            raise refusal
        return bye.code is ByeCode.FINISHED and self.settings.on_server_bye == "exit"

    async def _one_link(self, ctx: ssl.SSLContext | None) -> tuple[str, Bye | None]:
        """One connection: how it ended, and the server's Bye if it said one."""
        assert self.learner is not None
        server = self.settings.server
        log.info(
            "connecting", host=server.host, port=server.port, attempt=self.backoff.failures + 1
        )
        try:
            peer = await connect(
                server.host,
                server.port,
                ssl_context=ctx,
                server_hostname=server.server_name,
                timeouts=LINK_TIMEOUTS,
            )
        except CONNECTION_ERRORS as exc:
            _raise_if_refused(exc)
            log.warning("connect_failed", error=_describe(exc))
            return "lost", None
        link = ServerLink(peer, self.learner, self.worker, self.stop)
        try:
            reason = await link.run()
        except CONNECTION_ERRORS as exc:
            _raise_if_refused(exc)
            log.warning("session_lost", error=_describe(exc))
            reason = "lost"
        finally:
            if link.welcome is not None:
                self.backoff.reset()  # it was up: start the delays from the beginning
            await _close_quietly(peer)
        status = f"bye ({link.bye.code.value})" if link.bye is not None else reason
        systemd.notify(f"STATUS={status}")
        return reason, link.bye

    async def _sleep(self, delay: float) -> None:
        log.info("reconnect_wait", delay_s=round(delay, 3))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=delay)

    async def _refused(self, exc: Refused | ServerCertificateRejected) -> None:
        """One clear event (and the state saved, a ``stop`` record) before exiting 77/78."""
        log.error("client_refused", why=exc.why, detail=str(exc), exit_code=int(exc.exit_code))
        systemd.notify(f"STATUS=refused: {exc.why}")
        learner = self.learner
        assert learner is not None
        await self.worker.run(learner.persist)
        learner.close("refused")

    async def _finish(self, reason: str) -> None:
        learner = self.learner
        assert learner is not None
        await self.worker.run(learner.persist)
        await self.worker.run(learner.final_eval)
        learner.close(reason)
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


def _raise_if_refused(exc: BaseException) -> None:
    """A TLS failure that no retry can fix (our certificate refused, theirs rejected)."""
    refusal = tls_refusal(exc)
    if refusal is not None:
        raise refusal from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def run_daemon(settings: ClientSettings) -> int:
    """Run until Bye or SIGTERM; uvloop when available (as the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(ClientDaemon(settings).run())
    return uvloop.run(ClientDaemon(settings).run())
