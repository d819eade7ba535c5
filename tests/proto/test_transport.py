"""The asyncio transport on real loopback sockets: every message, misbehaving peers, TLS.

Plain TCP is enough for the protocol behaviour; one test runs the same conversation over
mutual TLS with the session PKI. Timeouts here are safety nets, never timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedllm_proto.codec import Encoding
from fedllm_proto.errors import ErrorCode, ProtocolError
from fedllm_proto.frames import Flags, FrameType, pack_header
from fedllm_proto.messages import (
    Ack,
    GlobalModel,
    Heartbeat,
    Hello,
    Message,
    Reject,
    RejectCode,
    TrainRequest,
    Update,
    Welcome,
)
from fedllm_proto.peer import INBOX_MESSAGES, YIELD_BYTES
from fedllm_proto.testing import example_tensors, hello, tensors_equal, update
from fedllm_proto.timeouts import CLIENT, SERVER
from fedllm_proto.transport import Peer, PeerClosed, Server, connect, prepare, run, serve

SAFETY_S = 20.0


LOOP = {"runner": run}


@pytest.fixture(autouse=True, params=["uvloop", "asyncio"])
def event_loop_kind(request: pytest.FixtureRequest) -> None:
    """Every test runs on uvloop (production) and on the stock asyncio loop (what tests of
    other packages may use)."""
    LOOP["runner"] = run if request.param == "uvloop" else asyncio.run


def runs(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(SAFETY_S):
            await coro_fn()

    LOOP["runner"](guarded())


async def echo_server(**kwargs: Any) -> tuple[Server, int, list[Message]]:
    """A server that welcomes, then answers each Update with an Ack; records what it got."""
    got: list[Message] = []

    async def on_peer(peer: Peer) -> None:
        first = await peer.recv()
        got.append(first)
        await peer.send(Welcome(peer.protocol_version, "c", "gsfs", {}, 0, 0.1))
        with contextlib.suppress(PeerClosed):
            while True:
                msg = await peer.recv()
                got.append(msg)
                assert isinstance(msg, Update)
                await peer.send(Ack(msg.update_id, 1))

    server = await serve(on_peer, **kwargs)
    return server, server.sockets[0].getsockname()[1], got


async def greeted(port: int, **kwargs: Any) -> Peer:
    peer = await connect("127.0.0.1", port, **kwargs)
    await peer.send(hello())
    assert isinstance(await peer.recv(), Welcome)
    return peer


def test_every_server_message_crosses_the_loopback() -> None:
    sent: list[Message] = [
        GlobalModel(7, example_tensors(3)),
        TrainRequest(1, 7, 10, 30.0),
        Ack("u", 8),
        Reject("u2", RejectCode.REPLAY, "seen"),
    ]
    received: list[Message] = []

    async def on_peer(peer: Peer) -> None:
        await peer.recv()
        await peer.send(Welcome(peer.protocol_version, "c", "fedavg", {}, 0, 5.0))
        await peer.send_prepared(prepare(sent[0]))
        for msg in sent[1:]:
            await peer.send(msg)
        await peer.close("done")

    async def main() -> None:
        server = await serve(on_peer)
        peer = await greeted(server.sockets[0].getsockname()[1])
        with contextlib.suppress(PeerClosed):
            while True:
                received.append(await peer.recv())
        server.close()

    runs(main)
    assert received == sent and tensors_equal(received[0].tensors, sent[0].tensors)  # type: ignore[union-attr]


@pytest.mark.parametrize("encoding", list(Encoding))
def test_updates_in_every_encoding_reach_the_server(encoding: Encoding) -> None:
    async def main() -> None:
        server, port, got = await echo_server()
        peer = await greeted(port)
        await peer.send(update(encoding))
        assert await peer.recv() == Ack("upd-1", 1)
        await peer.close()
        server.close()
        assert got[1] == update(encoding)

    runs(main)


def test_one_prepared_message_goes_to_several_peers() -> None:
    prepared = prepare(GlobalModel(2, {"w": np.arange(300_000, dtype=np.float32)}))
    results: list[Message] = []

    async def on_peer(peer: Peer) -> None:
        await peer.recv()
        await peer.send(Welcome(peer.protocol_version, "c", "fedavg", {}, 0, 5.0))
        await peer.send_prepared(prepared)
        await peer.recv()  # until the client leaves

    async def main() -> None:
        server = await serve(on_peer)
        port = server.sockets[0].getsockname()[1]
        peers = [await greeted(port) for _ in range(3)]
        results.extend([await p.recv() for p in peers])
        for p in peers:
            await p.close()
        server.close()

    runs(main)
    assert all(tensors_equal(r.tensors, prepared.message.tensors) for r in results)  # type: ignore[union-attr]


def test_bye_surfaces_as_peer_closed_with_the_reason() -> None:
    async def on_peer(peer: Peer) -> None:
        await peer.recv()
        await peer.close("maintenance")

    async def main() -> None:
        server = await serve(on_peer)
        peer = await connect("127.0.0.1", server.sockets[0].getsockname()[1])
        await peer.send(hello())
        with pytest.raises(PeerClosed, match="maintenance"):
            await peer.recv()
        server.close()

    runs(main)


async def raw_client(port: int, data: bytes) -> bytes:
    """Send raw bytes, return everything the server says before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


BAD_PEERS = {
    "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "oversize": pack_header(1, FrameType.HELLO, Flags.NONE, 2**31),
    "tls_hello": bytes([0x16, 0x03, 0x01, 0x00, 0xC8]) + bytes(40),
}


@pytest.mark.parametrize("kind", list(BAD_PEERS))
def test_bad_peer_is_logged_and_dropped_while_a_good_client_keeps_working(kind: str) -> None:
    answers: list[bytes] = []

    async def main() -> None:
        server, port, _got = await echo_server()
        good = await greeted(port)
        answers.append(await raw_client(port, BAD_PEERS[kind]))
        await good.send(update())
        assert await good.recv() == Ack("upd-1", 1)
        await good.close()
        server.close()

    with capture_logs() as logs:
        runs(main)
    events = [e for e in logs if e["event"] == "peer_protocol_error"]
    assert len(events) == 1 and events[0]["address"].startswith("127.0.0.1:")
    assert FrameType.ERROR.to_bytes(1, "big") == answers[0][5:6]  # an Error frame came back


def test_silent_peer_is_timed_out_while_a_heartbeating_client_stays() -> None:
    async def main() -> None:
        server, port, _got = await echo_server(timeouts=SERVER.but(idle_s=0.5, heartbeat_s=0.1))
        # heartbeats every 0.1 s (from Welcome)
        good = await greeted(port, timeouts=CLIENT.but(idle_s=5.0))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() != b""  # silent: the server sends an Error and closes
        await good.send(update())
        assert await good.recv() == Ack("upd-1", 1)
        writer.close()
        await good.close()
        server.close()

    with capture_logs() as logs:
        runs(main)
    assert [e["reason"] for e in logs if e["event"] == "peer_idle_timeout"] == ["silent for 0.5s"]


def test_client_recv_raises_peer_closed_idle_when_the_server_goes_silent() -> None:
    async def main() -> None:
        async def on_peer(peer: Peer) -> None:
            await asyncio.sleep(SAFETY_S)  # never answers, never heartbeats

        server = await serve(on_peer, timeouts=SERVER.but(heartbeat_s=None))
        port = server.sockets[0].getsockname()[1]
        peer = await connect("127.0.0.1", port, timeouts=CLIENT.but(idle_s=0.3))
        await peer.send(hello())
        with pytest.raises(PeerClosed) as err:
            await peer.recv()
        assert err.value.kind == "idle" and err.value.code is ErrorCode.IDLE_TIMEOUT
        with pytest.raises(PeerClosed):  # a dead link is the same exception on send
            await peer.send(Heartbeat())
        server.close()

    with capture_logs():
        runs(main)


def test_protocol_violation_by_the_server_ends_the_link_with_its_code_at_the_client() -> None:
    async def on_peer(peer: Peer) -> None:
        await peer.recv()
        peer.connection.state = peer.connection.state.OPEN  # skip Welcome: a buggy server
        await peer.send(Ack("x", 1))
        await asyncio.sleep(1)

    async def main() -> None:
        server = await serve(on_peer)
        peer = await connect("127.0.0.1", server.sockets[0].getsockname()[1])
        await peer.send(hello())
        with pytest.raises(PeerClosed) as err:
            await peer.recv()
        assert err.value.kind == "protocol" and err.value.code is ErrorCode.UNEXPECTED_MESSAGE
        assert isinstance(err.value.cause, ProtocolError)
        with pytest.raises(PeerClosed):  # not LocalProtocolError: the link is dead, not us
            await peer.send(update())
        server.close()

    with capture_logs():
        runs(main)


def test_mutual_tls_conversation_uses_the_certificate_identity(pki: Any) -> None:
    ids: list[str] = []

    async def on_peer(peer: Peer) -> None:
        ids.append(peer.peer_id)
        msg = await peer.recv()
        assert isinstance(msg, Hello)
        await peer.send(Welcome(peer.protocol_version, peer.peer_id, "gsfs", {}, 0, 5.0))
        await peer.send_prepared(prepare(GlobalModel(1, example_tensors())))
        await peer.recv()

    async def main() -> None:
        server = await serve(on_peer, ssl_context=pki.server_context())
        peer = await connect(
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
            ssl_context=pki.client_context("client-2"),
            server_hostname="localhost",
        )
        await peer.send(hello())
        welcome = await peer.recv()
        model = await peer.recv()
        assert isinstance(welcome, Welcome) and welcome.client_id == "client-2"
        assert tensors_equal(model.tensors, example_tensors())  # type: ignore[union-attr]
        await peer.close()
        server.close()

    runs(main)
    assert ids == ["client-2"]


def test_plaintext_client_at_a_tls_server_is_refused_and_logged(pki: Any) -> None:
    async def main() -> None:
        server, port, _got = await echo_server(ssl_context=pki.server_context())
        assert await raw_client(port, bytes(hello_frame())) == b""
        server.close()

    with capture_logs() as logs:
        runs(main)
    refused = [e for e in logs if e["event"] == "peer_refused"]
    assert len(refused) == 1 and "TLS" in refused[0]["reason"]


def hello_frame() -> bytes:
    from fedllm_proto.connection import Connection
    from fedllm_proto.states import Role

    return Connection(Role.CLIENT).send(hello(), 0.0)


def test_a_slow_application_pauses_reading_instead_of_buffering_everything() -> None:
    big = update(tensors={"w": np.ones(250_000, np.float32)})  # 1 MB each
    count = 30
    seen: dict[str, Any] = {}

    async def on_peer(peer: Peer) -> None:
        await peer.recv()
        await peer.send(Welcome(peer.protocol_version, "c", "gsfs", {}, 0, 5.0))
        proto = peer._proto
        while not proto.reading_paused:  # the app is "busy": nothing is received yet
            await asyncio.sleep(0.01)
        seen["queued"] = len(proto.inbox)
        seen["received"] = [await peer.recv() for _ in range(count)]

    async def main() -> None:
        server = await serve(on_peer)
        peer = await greeted(server.sockets[0].getsockname()[1])
        for _ in range(count):
            await peer.send(big)
        while "received" not in seen:
            await asyncio.sleep(0.01)
        await peer.close()
        server.close()

    runs(main)
    assert seen["queued"] == INBOX_MESSAGES and len(seen["received"]) == count


def test_revoked_client_is_refused_by_serve_and_others_still_join(pki: Any) -> None:
    async def main() -> None:
        server, port, _got = await echo_server(
            ssl_context=pki.server_context(), revocation=pki.revocation()
        )
        tls_args = {"ssl_context": pki.client_context(pki.revoked_client)}
        revoked = await connect("127.0.0.1", port, server_hostname="localhost", **tls_args)
        with pytest.raises(PeerClosed):
            await revoked.recv()
        good = await greeted(
            port, ssl_context=pki.client_context("client-1"), server_hostname="localhost"
        )
        await good.close()
        server.close()

    with capture_logs() as logs:
        runs(main)
    refused = [e for e in logs if e["event"] == "peer_refused"]
    assert len(refused) == 1 and "revoked" in refused[0]["reason"]


def test_a_big_send_to_a_fast_reader_still_gives_the_loop_turns() -> None:
    """A write that never blocks (the peer reads as fast as we write) must not hold the loop:
    a broadcast wrote every client's whole model in one turn, and no join or heartbeat was
    served meanwhile (bench/scale.py)."""
    size = 4 << 20
    turns_during_send: list[int] = []

    async def on_peer(peer: Peer) -> None:
        await peer.recv()
        await peer.send(Welcome(peer.protocol_version, "c", "gsfs", {}, 0, 5.0))
        transport = peer._proto.transport
        assert transport is not None
        transport.set_write_buffer_limits(high=1 << 30)  # never paused: writable all along
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        counter = asyncio.create_task(count_turns())
        await asyncio.sleep(0)
        before = turns
        await peer.send(GlobalModel(1, {"w": np.zeros(size // 4, np.float32)}))
        turns_during_send.append(turns - before)
        counter.cancel()
        await peer.recv()  # until the client leaves

    async def main() -> None:
        server = await serve(on_peer)
        peer = await greeted(server.sockets[0].getsockname()[1])
        msg = await peer.recv()
        assert isinstance(msg, GlobalModel) and msg.tensors["w"].nbytes == size
        await peer.close()
        server.close()

    with capture_logs():
        runs(main)
    assert turns_during_send[0] >= size // YIELD_BYTES // 2


def test_a_model_sent_before_bye_arrives_whole_while_the_client_is_still_uploading(
    pki: Any,
) -> None:
    """The server publishes a model and says Bye while the client is in the middle of an
    upload (a federation's last version under load). Closing TLS at once made the client's
    late upload bytes an SSL error that aborted the transport and dropped the model's tail:
    the server must keep reading (and discard) until the client closes in turn."""
    big = {"w": np.arange(4 * 2**20, dtype=np.float32)}  # 16 MiB: more than socket buffers

    async def on_peer(peer: Peer) -> None:
        await peer.recv()
        await peer.send(Welcome(peer.protocol_version, peer.peer_id, "gsfs", {}, 0, 5.0))
        await peer.recv()  # the client is uploading now, and keeps doing so
        await peer.send_prepared(prepare(GlobalModel(1, big)))
        await peer.close("finished")

    async def keep_uploading(peer: Peer) -> None:
        with contextlib.suppress(PeerClosed):
            while True:
                await peer.send(update(tensors={"d": np.ones(2**18, dtype=np.float32)}))

    async def main() -> None:
        server = await serve(on_peer, ssl_context=pki.server_context())
        peer = await connect(
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
            ssl_context=pki.client_context("client-1"),
            server_hostname="localhost",
        )
        await peer.send(hello())
        await peer.recv()  # Welcome
        uploads = asyncio.ensure_future(keep_uploading(peer))
        model = await peer.recv()
        with pytest.raises(PeerClosed, match="finished"):
            await peer.recv()
        assert isinstance(model, GlobalModel)
        assert np.array_equal(model.tensors["w"], big["w"])
        await peer.close()
        await uploads
        server.close()

    with capture_logs():
        runs(main)
