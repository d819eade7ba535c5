"""A small scripted federation server on the real transport (mutual TLS), for session tests.

It is not the server daemon: it plays the server's side of the protocol just far enough to
drive clients through GSFS (ack, aggregate the plain mean of Δ at a quorum of distinct clients,
broadcast) and FedAvg (train requests, wait for every selected client, mean, next round), and
it records what it received so a test can check the client's behaviour from the outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import numpy as np

from fedllm_proto.messages import (
    Ack,
    ByeCode,
    Error,
    GlobalModel,
    Hello,
    TrainRequest,
    Update,
    Welcome,
)
from fedllm_proto.timeouts import SERVER
from fedllm_proto.transport import Peer, PeerClosed, serve

TensorDict = dict[str, np.ndarray]


@dataclass
class Scripted:
    strategy: str
    theta: TensorDict
    quorum: int = 2  # GSFS: distinct clients per aggregation; FedAvg: clients per round
    stop_after: int = 2  # versions; then every client gets Bye("done", finished)
    local_steps: int = 5
    bye_after_hello: bool = False  # welcome, global model, Bye: a server that ends the run
    # instead of Welcome: an Error frame, or a Bye with this code (a server that is stopping)
    refuse_with: Error | ByeCode | None = None
    # what each Bye says, one per connection in turn (the last one repeats)
    byes: list[ByeCode] = field(default_factory=lambda: [ByeCode.FINISHED])
    version: int = 0
    hellos: list[Hello] = field(default_factory=list)
    updates: list[tuple[str, Update]] = field(default_factory=list)
    peers: dict[str, Peer] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _pool: dict[str, Update] = field(default_factory=dict)
    _round_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, ctx: ssl.SSLContext | None, port: int = 0, idle_s: float = 30.0) -> int:
        self.server = await serve(
            self.on_peer,
            port=port,
            ssl_context=ctx,
            timeouts=SERVER.but(heartbeat_s=0.25, idle_s=idle_s),
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def stop_listening(self) -> None:
        self.server.close()
        for peer in list(self.peers.values()):
            peer._proto.transport.abort()  # type: ignore[union-attr]  # a crash, not a Bye
        self.peers.clear()

    async def on_peer(self, peer: Peer) -> None:
        hello = await peer.recv()
        assert isinstance(hello, Hello)
        self.hellos.append(hello)
        if isinstance(self.refuse_with, Error):
            await peer.send(self.refuse_with)
            return
        if self.refuse_with is not None:
            await peer.close("server is shutting down", self.refuse_with)
            return
        cid = peer.peer_id or hello.client_name
        await peer.send(Welcome(1, cid, self.strategy, {}, self.version, 0.25))
        await peer.send(GlobalModel(self.version, self.theta))
        self.peers[cid] = peer
        if self.bye_after_hello:
            await peer.close("done", self._next_bye())
            return
        if self.strategy == "fedavg" and len(self.peers) >= self.quorum:
            await self._request_round()
        with contextlib.suppress(PeerClosed, ConnectionError):
            while not self.done.is_set():
                msg = await peer.recv()
                if isinstance(msg, Update):
                    await self._on_update(cid, peer, msg)

    def _next_bye(self) -> ByeCode:
        return self.byes.pop(0) if len(self.byes) > 1 else self.byes[0]

    async def _on_update(self, cid: str, peer: Peer, update: Update) -> None:
        self.updates.append((cid, update))
        await peer.send(Ack(update.update_id, self.version))
        if update.base_version != self.version:
            return  # stale: counted by the test, left out of the mean
        self._pool[cid] = update
        if len(self._pool) >= self.quorum:
            await self._aggregate()

    async def _aggregate(self) -> None:
        deltas = [u.tensors for u in self._pool.values()]
        self.theta = {
            k: v + np.mean([d[k] for d in deltas if k in d] or [np.zeros_like(v)], axis=0)
            for k, v in self.theta.items()
        }
        self._pool.clear()
        self.version += 1
        if self.version >= self.stop_after:
            await self._finish()
            return
        for peer in list(self.peers.values()):
            with contextlib.suppress(PeerClosed, ConnectionError):
                await peer.send(GlobalModel(self.version, self.theta))
        if self.strategy == "fedavg":
            await self._request_round()

    async def _request_round(self) -> None:
        request = TrainRequest(self.version, self.version, self.local_steps, 60.0)
        for peer in list(self.peers.values()):
            await peer.send(request)

    async def _finish(self) -> None:
        for peer in list(self.peers.values()):
            with contextlib.suppress(PeerClosed, ConnectionError):
                await peer.send(GlobalModel(self.version, self.theta))
                await peer.close("done", self._next_bye())
        self.done.set()
