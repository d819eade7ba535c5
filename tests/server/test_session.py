"""A client that stops reading is disconnected once its bounded outbox is full."""

from __future__ import annotations

import asyncio

import numpy as np

from fedllm_proto.messages import PROTOCOL_VERSIONS, GlobalModel, Hello, Welcome
from fedllm_proto.transport import Peer, connect, prepare, serve
from fedllm_server.broadcast import OFFER_BATCH, FanOut, fan_out
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


class _Outbox:
    """Stands in for a session in the fan-out's bookkeeping only (no link needed for that)."""

    def __init__(self, client_id: str, accepts: bool) -> None:
        self.client_id, self.accepts, self.offered = client_id, accepts, 0

    def offer(self, item: object) -> bool:
        self.offered += 1
        return self.accepts


def test_fan_out_queues_to_everyone_and_gives_the_loop_turns_on_the_way() -> None:
    n = OFFER_BATCH * 3 + 5

    async def main() -> tuple[FanOut, int, list[_Outbox]]:
        outboxes = [_Outbox(f"c{i}", accepts=i % 100 != 7) for i in range(n)]
        seen_mid_fan_out = 0

        async def other_work() -> None:  # a join or a heartbeat waiting for its turn
            nonlocal seen_mid_fan_out
            while True:
                seen_mid_fan_out = sum(o.offered for o in outboxes)
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        prepared = prepare(GlobalModel(version=1, tensors={"w": np.ones(4, np.float32)}))
        fan = await fan_out(outboxes, prepared)  # type: ignore[arg-type]
        ticker.cancel()
        return fan, seen_mid_fan_out, outboxes

    fan, seen, outboxes = asyncio.run(main())
    assert all(o.offered == 1 for o in outboxes)
    dropped = [o.client_id for o in outboxes if not o.accepts]
    assert fan.dropped == dropped and len(fan.queued) == n - len(dropped)
    assert (
        fan.bytes_out
        == len(fan.queued)
        * prepare(GlobalModel(version=1, tensors={"w": np.ones(4, np.float32)})).nbytes
    )
    assert 0 < seen < n  # other work ran while the fan-out was under way
