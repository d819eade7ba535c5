"""Real TLS 1.3 over loopback through the real transport: who gets in, who is refused, and why.

The server is ``fedllm_proto.transport.serve`` with ``tls.server_context`` and the fixture's
deny-list; a good client says Hello and is welcomed under its certificate CN. Every refusal must
be logged once as ``peer_refused`` with the peer's address and a readable reason, and must not
stop the server serving others. Each test runs on asyncio's loop and on uvloop (the daemons').
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from fedllm_core import certs
from fedllm_proto import tls
from fedllm_proto.messages import PROTOCOL_VERSIONS, Hello, Welcome
from fedllm_proto.transport import Peer, connect, run, serve

WAIT_S = 10.0  # a safety net against hangs, never a timing assertion
T = TypeVar("T")
LogEvents = list[MutableMapping[str, Any]]
ClientResult = Welcome | BaseException | bytes


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    return asyncio.run if request.param == "asyncio" else run


@dataclass
class Federation:
    """A running server plus what it saw."""

    port: int
    logs: LogEvents
    admitted: list[str] = field(default_factory=list)

    def refusals(self) -> list[str]:
        return [e["reason"] for e in self.logs if e["event"] == "peer_refused"]

    def addresses(self) -> list[str]:
        return [e["address"] for e in self.logs if e["event"] == "peer_refused"]

    async def until_refused(self, count: int) -> None:
        # A refused client may give up before the server has logged why.
        async with asyncio.timeout(WAIT_S):
            while len(self.refusals()) < count:
                await asyncio.sleep(0.005)


def _hello() -> Hello:
    return Hello(PROTOCOL_VERSIONS, "fingerprint", (), sample_count=1)


async def _welcome(fed: Federation, peer: Peer) -> None:
    fed.admitted.append(peer.peer_id)
    await peer.recv()  # the Hello
    await peer.send(Welcome(PROTOCOL_VERSIONS[-1], peer.peer_id, "fedavg", {}, 0, 5.0))


async def tls_client(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> ClientResult:
    """What a client gets: the Welcome, or the exception that ended it."""
    try:
        async with asyncio.timeout(WAIT_S):
            peer = await connect("127.0.0.1", port, ssl_context=ctx, server_hostname=host)
            try:
                await peer.send(_hello())
                return await peer.recv()  # type: ignore[return-value]
            finally:
                await peer.close()
    except Exception as exc:  # the refusal *is* the result here
        return exc


async def plaintext_client(port: int) -> ClientResult:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HELLO plaintext client\r\n" * 8)
    try:
        async with asyncio.timeout(WAIT_S):
            return await reader.read()
    except OSError as exc:
        return exc
    finally:
        writer.transport.abort()


Scenario = Callable[[Federation], Awaitable[T]]


def run_federation(
    runner: Any,
    ctx: ssl.SSLContext,
    revocation: tls.RevocationList | None,
    scenario: Scenario[T],
) -> tuple[Federation, T]:
    """Serve on 127.0.0.1:0 with TLS, run ``scenario(federation)``, stop the server."""

    async def main() -> tuple[Federation, T]:
        fed = Federation(0, logs)

        async def on_peer(peer: Peer) -> None:
            await _welcome(fed, peer)

        server = await serve(on_peer, "127.0.0.1", 0, ssl_context=ctx, revocation=revocation)
        fed.port = server.sockets[0].getsockname()[1]
        try:
            return fed, await scenario(fed)
        finally:
            server.close()
            await server.wait_closed()

    with capture_logs() as logs:
        return runner(main())


def one_client(
    runner: Any, pki: Any, make_ctx: Callable[[Any], ssl.SSLContext], host: str = "localhost"
) -> tuple[Federation, ClientResult]:
    async def scenario(fed: Federation) -> ClientResult:
        result = await tls_client(fed.port, make_ctx(pki), host)
        if not isinstance(result, Welcome):
            await fed.until_refused(1)
        return result

    return run_federation(runner, pki.server_context(), pki.revocation(), scenario)


# ---------------------------------------------------------------------------- admitted


def test_good_client_is_admitted_under_its_certificate_cn(runner: Any, pki: Any) -> None:
    fed, _ = one_client(runner, pki, lambda p: p.client_context("client-2"))
    assert fed.admitted == ["client-2"]


def test_good_client_is_welcomed_under_its_id(runner: Any, pki: Any) -> None:
    _, result = one_client(runner, pki, lambda p: p.client_context("client-1"))
    assert isinstance(result, Welcome) and result.client_id == "client-1"


def test_client_reaching_server_by_ip_is_admitted(runner: Any, pki: Any) -> None:
    fed, _ = one_client(runner, pki, lambda p: p.client_context("client-3"), host="127.0.0.1")
    assert fed.admitted == ["client-3"]


def test_tls_13_is_negotiated(runner: Any, pki: Any) -> None:
    async def scenario(fed: Federation) -> str | None:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", fed.port, ssl=pki.client_context(), server_hostname="localhost"
        )
        version: str | None = writer.get_extra_info("ssl_object").version()
        writer.transport.abort()
        return version

    assert run_federation(runner, pki.server_context(), None, scenario)[1] == "TLSv1.3"


# ---------------------------------------------------------------------------- refused


def _no_cert_context(pki: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.federation.ca_cert))
    return ctx


def _server_cert_as_client_context(pki: Any) -> ssl.SSLContext:
    ctx = _no_cert_context(pki)
    ctx.load_cert_chain(str(pki.federation.server_cert), str(pki.federation.server_key))
    return ctx


def _tls12_context(pki: Any) -> ssl.SSLContext:
    ctx = _no_cert_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    paths = pki.federation.clients["client-1"]
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return ctx


# case -> (client context, words the server's logged reason must contain)
REFUSED: dict[str, tuple[Callable[[Any], ssl.SSLContext], str]] = {
    "no_client_cert": (_no_cert_context, "client sent no certificate"),
    "foreign_ca": (lambda p: p.foreign_client_context(), "not issued by the federation CA"),
    "revoked": (lambda p: p.client_context(p.revoked_client), "is revoked"),
    "tls12": (_tls12_context, "no TLS 1.3"),
    "server_cert_as_client": (_server_cert_as_client_context, "not for this role"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_client_is_not_admitted(runner: Any, pki: Any, case: str) -> None:
    fed, result = one_client(runner, pki, REFUSED[case][0])
    assert (fed.admitted, isinstance(result, Welcome)) == ([], False)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_client_refusal_is_logged_with_reason(runner: Any, pki: Any, case: str) -> None:
    fed, _ = one_client(runner, pki, REFUSED[case][0])
    assert [REFUSED[case][1] in reason for reason in fed.refusals()] == [True]


def test_refusal_log_names_the_peer_address(runner: Any, pki: Any) -> None:
    fed, _ = one_client(runner, pki, _no_cert_context)
    assert [a.startswith("127.0.0.1:") for a in fed.addresses()] == [True]


def test_plaintext_client_is_refused_with_reason(runner: Any, pki: Any) -> None:
    async def scenario(fed: Federation) -> ClientResult:
        result = await plaintext_client(fed.port)
        await fed.until_refused(1)
        return result

    fed, _ = run_federation(runner, pki.server_context(), pki.revocation(), scenario)
    assert (fed.admitted, ["plaintext" in r for r in fed.refusals()]) == ([], [True])


def test_client_refuses_wrong_server_host_name(runner: Any, pki: Any) -> None:
    _, result = one_client(runner, pki, lambda p: p.client_context(), host="fl.example.org")
    assert isinstance(result, ssl.SSLCertVerificationError) and "Hostname mismatch" in str(result)


def test_wrong_host_name_is_not_admitted_and_server_logs_it(runner: Any, pki: Any) -> None:
    fed, _ = one_client(runner, pki, lambda p: p.client_context(), host="fl.example.org")
    assert (fed.admitted, len(fed.refusals())) == ([], 1)


def test_client_refuses_server_with_certificate_from_another_ca(runner: Any, pki: Any) -> None:
    foreign = pki.foreign
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    impostor.load_cert_chain(str(foreign.server_cert), str(foreign.server_key))

    async def scenario(fed: Federation) -> ClientResult:
        return await tls_client(fed.port, pki.client_context())

    _, result = run_federation(runner, impostor, None, scenario)
    assert isinstance(result, ssl.SSLCertVerificationError)


def test_client_refuses_server_presenting_a_client_certificate(runner: Any, pki: Any) -> None:
    # A federation member must not impersonate the server to the others: client certificates
    # carry no SAN (no host name can match) and only the clientAuth purpose.
    member = pki.federation.clients["client-2"]
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    impostor.load_cert_chain(str(member.cert), str(member.key))

    async def scenario(fed: Federation) -> ClientResult:
        return await tls_client(fed.port, pki.client_context(), host="client-2")

    _, result = run_federation(runner, impostor, None, scenario)
    assert isinstance(result, ssl.SSLCertVerificationError)


def test_server_keeps_serving_after_every_kind_of_refusal(runner: Any, pki: Any) -> None:
    async def scenario(fed: Federation) -> list[ClientResult]:
        bad = [tls_client(fed.port, make(pki)) for make, _ in REFUSED.values()]
        bad += [plaintext_client(fed.port)]
        bad += [tls_client(fed.port, pki.client_context(), "fl.example.org")]
        await asyncio.gather(*bad)
        await fed.until_refused(len(bad))
        return [await tls_client(fed.port, pki.client_context(n)) for n in pki.clients]

    fed, results = run_federation(runner, pki.server_context(), pki.revocation(), scenario)
    welcomed = [r.client_id if isinstance(r, Welcome) else r for r in results]
    assert (fed.admitted, welcomed) == (list(pki.clients), list(pki.clients))


def test_revocation_takes_effect_without_restart(runner: Any, pki: Any, tmp_path: Path) -> None:
    own = certs.make_federation_pki(tmp_path / "pki", clients=["gw"])
    mine = pki.__class__(federation=own, foreign=pki.foreign)

    async def scenario(fed: Federation) -> None:
        await tls_client(fed.port, mine.client_context("gw"))
        certs.revoke(own.dir, "gw")  # what `fedllm certs revoke` does; no SIGHUP, no restart
        await tls_client(fed.port, mine.client_context("gw"))
        await fed.until_refused(1)

    fed, _ = run_federation(runner, mine.server_context(), mine.revocation(), scenario)
    assert (fed.admitted, fed.refusals()) == (["gw"], ["certificate of 'gw' is revoked"])
