"""A peer refused after its TLS handshake succeeded (certificate on the deny-list) is told so.

Real TLS 1.3 on loopback through ``serve`` with the fixture's deny-list, on uvloop and on
asyncio's loop. The refused client must read an Error(UNAUTHORIZED) frame, not a bare closed
connection (which a client would retry forever), and the server must keep serving others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from fedllm_proto.errors import ErrorCode
from fedllm_proto.messages import PROTOCOL_VERSIONS, Welcome
from fedllm_proto.testing import hello
from fedllm_proto.transport import Peer, PeerClosed, connect, run, serve

SAFETY_S = 20.0  # a net against hangs, never a timing assertion
T = TypeVar("T")


@pytest.fixture(params=["uvloop", "asyncio"])
def runner(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    return run if request.param == "uvloop" else asyncio.run


async def _welcome(peer: Peer) -> None:
    await peer.recv()  # the Hello
    await peer.send(Welcome(PROTOCOL_VERSIONS[-1], peer.peer_id, "fedavg", {}, 0, 5.0))
    await peer.recv()  # until the client goes


async def _what_the_client_reads(pki: Any, name: str) -> BaseException | object:
    async with asyncio.timeout(SAFETY_S):
        ctx, deny = pki.server_context(), pki.revocation()
        server = await serve(_welcome, ssl_context=ctx, revocation=deny)
        port = server.sockets[0].getsockname()[1]
        try:
            peer = await connect("127.0.0.1", port, pki.client_context(name), "localhost")
            try:
                await peer.send(hello())
                return await peer.recv()
            except PeerClosed as exc:
                return exc
            finally:
                await peer.close()
        finally:
            server.close()


def test_revoked_client_reads_an_unauthorized_error(runner: Any, pki: Any) -> None:
    got = runner(_what_the_client_reads(pki, pki.revoked_client))
    assert isinstance(got, PeerClosed) and got.error is not None
    assert got.error.code is ErrorCode.UNAUTHORIZED


def test_unauthorized_error_says_the_certificate_is_revoked(runner: Any, pki: Any) -> None:
    got = runner(_what_the_client_reads(pki, pki.revoked_client))
    assert isinstance(got, PeerClosed) and got.error is not None and "revoked" in got.error.detail


def test_refusal_is_logged_once_as_peer_refused_with_its_code(runner: Any, pki: Any) -> None:
    with capture_logs() as logs:
        runner(_what_the_client_reads(pki, pki.revoked_client))
    refused = [e for e in logs if e["event"] == "peer_refused"]
    assert [(e.get("code"), "revoked" in e["reason"]) for e in refused] == [("UNAUTHORIZED", True)]


def test_a_good_client_is_still_welcomed(runner: Any, pki: Any) -> None:
    got = runner(_what_the_client_reads(pki, pki.clients[0]))
    assert isinstance(got, Welcome) and got.client_id == pki.clients[0]
