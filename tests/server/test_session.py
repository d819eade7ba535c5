"""A client that stops reading is disconnected once its bounded outbox is full."""

from __future__ import annotations

import asyncio

import numpy as np

from fedllm_proto.messages import PROTOCOL_VERSIONS, GlobalModel, Hello, Welcome
from fedllm_proto.transport import Peer, connect, prepare, serve
from fedllm_server.session import ClientSession


async def _stalled_client_outcome() -> tuple[bool, str]:
    sessions: list[ClientSession] = []
    ready = asyncio.Event()

    async def on_peer(peer: Peer) -> None:
        await peer.recv()  # Hello
        await peer.send(Welcome(peer.protocol_version, "c", "fedavg", {}, 0, 5.0))
        session = ClientSession(peer, "c", "fp", 1, queue_bound=2)
        session.start()
        sessions.append(session)
        ready.set()
        await session.closed.wait()

    server = await serve(on_peer, "127.0.0.1", 0, None)
    port = server.sockets[0].getsockname()[1]
    client = await connect("127.0.0.1", port, None)
    await client.send(Hello(PROTOCOL_VERSIONS, "fp", (), 1, -1, client_name="c"))
    await client.recv()  # Welcome; then the client never reads again
    await ready.wait()
    big = prepare(GlobalModel(1, {"w": np.zeros(1_000_000, np.float32)}))  # 4 MB, encoded once
    session = sessions[0]
    accepted = True
    for _ in range(200):  # far more than socket buffers + the client's inbox can hold
        accepted = session.offer(big)
        if not accepted:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    server.close()
    await client.close()
    return accepted, session.close_reason


def test_stalled_client_is_dropped_when_outbox_overflows() -> None:
    assert asyncio.run(_stalled_client_outcome()) == (False, "outbox_full")
