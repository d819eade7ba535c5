"""A server that closes its sessions and exits at once still delivers what it had queued.

The daemon's shutdown queues the last global model, says Bye to every session and then ends its
event loop. Peer.close used to return while the TLS transport still held the Bye (and
sometimes the model's tail) in its buffer, so the process exited without sending it: about
half of the clients saw a lost connection instead of a Bye, and a client that sees that
reconnects forever. The server runs in its own process here, because only a process that
really exits loses its buffers.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import ssl
from multiprocessing.queues import Queue
from typing import Any

import numpy as np

from fedllm_core.certs import PkiPaths
from fedllm_proto import tls
from fedllm_proto.messages import PROTOCOL_VERSIONS, Hello, Welcome
from fedllm_proto.timeouts import CLIENT, SERVER
from fedllm_proto.transport import Peer, PeerClosed, connect, run, serve
from fedllm_server.broadcast import encode_global, fan_out
from fedllm_server.session import ClientSession

CLIENTS = 4
MODEL_FLOATS = 5_000_000  # 20 MB: more than the socket buffers hold, so some stays queued


async def _serve_once_and_exit(paths: PkiPaths, port_out: Queue[int]) -> None:
    ctx = tls.server_context(paths.ca_cert, paths.server_cert, paths.server_key)
    sessions: list[ClientSession] = []
    joined = asyncio.Event()

    async def on_peer(peer: Peer) -> None:
        await peer.recv()  # Hello
        await peer.send(Welcome(peer.protocol_version, "c", "fedavg", {}, 0, 5.0))
        session = ClientSession(peer, f"c{len(sessions)}", "fp", 1, queue_bound=4)
        session.start()
        sessions.append(session)
        if len(sessions) == CLIENTS:
            joined.set()
        await session.closed.wait()

    server = await serve(on_peer, "127.0.0.1", 0, ctx, timeouts=SERVER.but(idle_s=60.0))
    port_out.put(server.sockets[0].getsockname()[1])
    await joined.wait()
    await fan_out(sessions, await encode_global(1, {"w": np.ones(MODEL_FLOATS, np.float32)}))
    await asyncio.gather(*(s.close("stop", flush_s=10.0) for s in sessions))
    # return at once, as the daemon does: the event loop ends here


def _server_process(paths: PkiPaths, port_out: Queue[int]) -> None:
    run(_serve_once_and_exit(paths, port_out))


async def _what_one_client_saw(port: int, ctx: ssl.SSLContext) -> tuple[list[str], str]:
    peer = await connect("127.0.0.1", port, ctx, "localhost", timeouts=CLIENT.but(idle_s=60.0))
    await peer.send(Hello(PROTOCOL_VERSIONS, "fp", (), 1, -1))
    await peer.recv()  # Welcome
    got: list[str] = []
    try:
        while True:
            got.append(type(await peer.recv()).__name__)
    except PeerClosed as exc:
        return got, str(exc)


async def _what_the_clients_saw(port: int, paths: PkiPaths) -> list[tuple[list[str], str]]:
    name = next(iter(paths.clients))
    ctx = tls.client_context(paths.ca_cert, paths.clients[name].cert, paths.clients[name].key)
    return list(await asyncio.gather(*(_what_one_client_saw(port, ctx) for _ in range(CLIENTS))))


def test_every_client_gets_the_last_model_and_a_bye_from_an_exiting_server(pki: Any) -> None:
    spawn = mp.get_context("spawn")
    seen = []
    for _ in range(2):  # the race lost ~half the clients each time: 8 chances to show it
        port_out: Queue[int] = spawn.Queue()
        proc = spawn.Process(target=_server_process, args=(pki.federation, port_out))
        proc.start()
        try:
            seen += run(_what_the_clients_saw(port_out.get(timeout=60), pki.federation))
        finally:
            proc.join(timeout=30)
            proc.kill()
    assert all(got == ["GlobalModel"] and reason.startswith("bye") for got, reason in seen), seen
