"""Real TLS 1.3 over loopback with the fixture PKI: who gets in, who is refused, and why.

The server here is a minimal asyncio shell doing what the transport does after accept: TLS
handshake with ``server_context``, then ``authorize_peer`` (client id + deny-list). Every refusal
must be logged with the peer's address and a readable reason, and must not stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from fedllm_core import certs
from fedllm_proto import tls

HANDSHAKE_TIMEOUT_S = 10.0  # a safety net against hangs, not a timing assertion
log = structlog.get_logger("test.tls_loopback")


@dataclass
class Server:
    ctx: ssl.SSLContext
    revocation: tls.RevocationList | None
    admitted: list[str] = field(default_factory=list)
    port: int = 0
    active: int = 0  # handlers still running; a test waits for 0 before reading the log

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            await self._handle(writer)
        finally:
            self.active -= 1

    async def _handle(self, writer: asyncio.StreamWriter) -> None:
        address = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for(start_tls) never completes.
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await writer.start_tls(self.ctx)
            client_id = tls.authorize_peer(writer.get_extra_info("ssl_object"), self.revocation)
        except (OSError, ssl.SSLError, EOFError, tls.PeerRejected) as exc:
            log.warning("peer_refused", address=address, reason=tls.handshake_failure_reason(exc)
                        if not isinstance(exc, tls.PeerRejected) else str(exc))  # fmt: skip
            writer.transport.abort()
            return
        self.admitted.append(client_id)
        writer.write(f"welcome {client_id}\n".encode())
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.drain()
            writer.close()
            await writer.wait_closed()


ClientResult = bytes | BaseException


async def tls_client(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> ClientResult:
    """What a client gets: the greeting line, b"" if cut off, or the exception it raised."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host),
            HANDSHAKE_TIMEOUT_S,
        )
        line = await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT_S)
    except (OSError, ssl.SSLError) as exc:
        return exc
    writer.transport.abort()
    return line


async def plaintext_client(port: int) -> ClientResult:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HELLO plaintext client\r\n" * 8)
    try:
        return await asyncio.wait_for(reader.read(), HANDSHAKE_TIMEOUT_S)
    except OSError as exc:
        return exc
    finally:
        writer.transport.abort()


Scenario = Callable[[Server], Awaitable[Any]]


def run_server(
    ctx: ssl.SSLContext, revocation: tls.RevocationList | None, scenario: Scenario
) -> tuple[Server, Any, list[MutableMapping[str, Any]]]:
    """Serve on 127.0.0.1:0, run ``scenario(server)``; returns server, result, log events."""

    async def main() -> Any:
        server = Server(ctx, revocation)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.port = listener.sockets[0].getsockname()[1]
        async with listener:
            result = await scenario(server)
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                while server.active:  # a refused client may finish before the server logs
                    await asyncio.sleep(0.005)
        return server, result

    with capture_logs() as logs:
        server, result = asyncio.run(main())
    return server, result, logs


def refusals(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [e["reason"] for e in logs if e["event"] == "peer_refused"]


def one_client(ctx_of: Callable[[Any], ssl.SSLContext], pki: Any, host: str = "localhost") -> Any:
    async def scenario(server: Server) -> ClientResult:
        return await tls_client(server.port, ctx_of(pki), host)

    return run_server(pki.server_context(), pki.revocation(), scenario)


# ---------------------------------------------------------------------------- admitted


def test_good_client_is_admitted_under_its_certificate_cn(pki: Any) -> None:
    server, _, _ = one_client(lambda p: p.client_context("client-2"), pki)
    assert server.admitted == ["client-2"]


def test_good_client_receives_the_greeting(pki: Any) -> None:
    _, result, _ = one_client(lambda p: p.client_context("client-1"), pki)
    assert result == b"welcome client-1\n"


def test_client_reaching_server_by_ip_is_admitted(pki: Any) -> None:
    _, result, _ = one_client(lambda p: p.client_context("client-1"), pki, host="127.0.0.1")
    assert result == b"welcome client-1\n"


def test_tls_13_is_negotiated(pki: Any) -> None:
    async def scenario(server: Server) -> str | None:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=pki.client_context(), server_hostname="localhost"
        )
        version = writer.get_extra_info("ssl_object").version()
        writer.transport.abort()
        return version

    assert run_server(pki.server_context(), None, scenario)[1] == "TLSv1.3"


# ---------------------------------------------------------------------------- refused


def _no_cert_context(pki: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.federation.ca_cert))
    return ctx


def _tls12_context(pki: Any) -> ssl.SSLContext:
    ctx = _no_cert_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    paths = pki.federation.clients["client-1"]
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return ctx


REFUSED = {
    "no_client_cert": (_no_cert_context, "client sent no certificate"),
    "foreign_ca": (lambda p: p.foreign_client_context(), "not issued by the federation CA"),
    "revoked": (lambda p: p.client_context(p.revoked_client), "is revoked"),
    "tls12": (_tls12_context, "no TLS 1.3"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_client_is_not_admitted(pki: Any, case: str) -> None:
    server, result, _ = one_client(REFUSED[case][0], pki)
    assert (server.admitted, isinstance(result, BaseException) or result == b"") == ([], True)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_client_refusal_is_logged_with_reason(pki: Any, case: str) -> None:
    _, _, logs = one_client(REFUSED[case][0], pki)
    assert [REFUSED[case][1] in r for r in refusals(logs)] == [True]


def test_refusal_log_names_the_peer_address(pki: Any) -> None:
    _, _, logs = one_client(_no_cert_context, pki)
    addresses = [e["address"] for e in logs if e["event"] == "peer_refused"]
    assert [a.startswith("127.0.0.1:") for a in addresses] == [True]


def test_plaintext_client_is_refused_with_reason(pki: Any) -> None:
    async def scenario(server: Server) -> ClientResult:
        return await plaintext_client(server.port)

    server, _, logs = run_server(pki.server_context(), pki.revocation(), scenario)
    assert (server.admitted, ["plaintext" in r for r in refusals(logs)]) == ([], [True])


def test_client_refuses_wrong_server_host_name(pki: Any) -> None:
    _, result, _ = one_client(lambda p: p.client_context(), pki, host="fl.example.org")
    assert isinstance(result, ssl.SSLCertVerificationError) and "Hostname mismatch" in str(result)


def test_wrong_host_name_is_not_admitted_and_server_logs_it(pki: Any) -> None:
    server, _, logs = one_client(lambda p: p.client_context(), pki, host="fl.example.org")
    assert (server.admitted, len(refusals(logs))) == ([], 1)


def test_client_refuses_server_with_certificate_from_another_ca(pki: Any) -> None:
    foreign = pki.foreign
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    impostor.load_cert_chain(str(foreign.server_cert), str(foreign.server_key))

    async def scenario(server: Server) -> ClientResult:
        return await tls_client(server.port, pki.client_context())

    _, result, _ = run_server(impostor, None, scenario)
    assert isinstance(result, ssl.SSLCertVerificationError)


def test_server_keeps_serving_after_every_kind_of_refusal(pki: Any) -> None:
    async def scenario(server: Server) -> list[ClientResult]:
        bad = [tls_client(server.port, make(pki)) for make, _ in REFUSED.values()]
        bad += [plaintext_client(server.port)]
        bad += [tls_client(server.port, pki.client_context(), "fl.example.org")]
        await asyncio.gather(*bad)
        return [await tls_client(server.port, pki.client_context(n)) for n in pki.clients]

    server, results, _ = run_server(pki.server_context(), pki.revocation(), scenario)
    assert (server.admitted, results) == (
        list(pki.clients),
        [f"welcome {n}\n".encode() for n in pki.clients],
    )


def test_revocation_takes_effect_without_restart(pki: Any, tmp_path: Path) -> None:
    own = certs.make_federation_pki(tmp_path / "pki", clients=["gw"])
    ctx = pki.__class__(federation=own, foreign=pki.foreign)

    async def scenario(server: Server) -> list[ClientResult]:
        first = await tls_client(server.port, ctx.client_context("gw"))
        certs.revoke(own.dir, "gw")  # what `fedllm certs revoke` does; no SIGHUP, no restart
        return [first, await tls_client(server.port, ctx.client_context("gw"))]

    server, _, logs = run_server(ctx.server_context(), ctx.revocation(), scenario)
    assert (server.admitted, refusals(logs)) == (["gw"], ["certificate of 'gw' is revoked"])
