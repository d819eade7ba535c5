"""How many clients one server process holds: memory per connection, loop lag, broadcast time.

The server side is the daemon's own connection and broadcast path over mutual TLS 1.3:
`serve` (TLS handshake, identity check), a Hello/Welcome handshake, a real `ClientSession`
(bounded outbox + writer task) per connection, and a broadcast is `encode_global` + `fan_out`
(the same `PreparedMessage` queued to every session), with the daemon's GC pacer
(fedllm_server/gc_pacing.py) beside it. It runs in this process, alone on its event loop;
the clients live in a child process (the other core), each a minimal protocol peer that
sends a real Hello, then a Heartbeat every few seconds, and counts the bytes it receives
without decoding them (10,000 decoded 1 MB models would need 20 GB of receive buffers there).
All clients share one certificate: the bench measures connections and bytes, not identities.

Figures, per client count:
- ``rss_per_connection_KiB``: growth of the server's RSS from before the first connection to
  all clients joined (after a GC), and again after the broadcasts, divided by N.
- ``loop_lag_ms``: how late a 10 ms ticker on the server's loop ran while the broadcasts were
  going on (max and p99). Anything the server must do meanwhile (a join, a heartbeat, an
  update) waits at most that long behind the fan-out.
- ``join_ms``: a third process connects a fresh client (TLS + Hello -> Welcome) again and again
  during the broadcasts: the time each join took (median, p95, max).
- ``broadcast_s``: from the start of encoding until every client holds every byte (first
  broadcast apart: it grows every socket buffer), and ``ratio_to_bare_tls``: the median
  against N x message bytes / the throughput of one bare TLS connection (plain asyncio writes
  from this loop to the client process) measured in the same run.
- ``dropped``: clients the fan-out disconnected (outbox full) or that lost their connection.

    python bench/scale.py [--clients 1000,10000] [--size-mb 1] [--broadcasts 4]

Needs an open-file limit above the largest client count (it raises its soft limit to the hard
limit). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import resource
import ssl
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import structlog

from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_proto import tls
from fedllm_proto.connection import Connection
from fedllm_proto.messages import PROTOCOL_VERSIONS, Heartbeat, Hello, Welcome
from fedllm_proto.states import Role, State
from fedllm_proto.timeouts import CLIENT, SERVER
from fedllm_proto.transport import Peer, PeerClosed, connect, run, serve
from fedllm_server.broadcast import encode_global, fan_out
from fedllm_server.gc_pacing import with_gc_pacing
from fedllm_server.session import ClientSession, bulk_gate

MB = 1_000_000
KiB = 1024
FINGERPRINT = "bench"
HEARTBEAT_S = 5.0
CONNECTING_AT_ONCE = 64  # handshakes in flight from the client process (the backlog is 256)
BARE_TLS_BYTES = 512 * MB
TICK_S = 0.010
SAFETY_S = 600.0  # no wait in this bench is unbounded


def global_state(size_mb: float, seed: int = 0) -> dict[str, np.ndarray]:
    """~size_mb of float32 in 16 tensors (a LoRA-adapter-like layout)."""
    rng = np.random.default_rng(seed)
    per = int(size_mb * MB) // 4 // 16
    return {f"layer{i}.lora_A": rng.standard_normal(per, dtype=np.float32) for i in range(16)}


def _frame_bytes(msg: Any, state: State = State.IDLE) -> bytes:
    conn = Connection(Role.CLIENT, now=0.0)
    conn.state = state
    return b"".join(bytes(b) for b in conn.send_buffers(msg, 0.0))


# ------------------------------------------------------------------------------ client process

_SCRATCH = memoryview(bytearray(256 * KiB))  # every counting peer reads into it: bytes unused


class CountingPeer(asyncio.BufferedProtocol):
    """A client that says Hello, heartbeats, and only counts what it receives."""

    def __init__(self, hello: bytes, heartbeat: bytes, counts: Counts) -> None:
        self.hello, self.heartbeat, self.counts = hello, heartbeat, counts
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.hello)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SCRATCH

    def buffer_updated(self, nbytes: int) -> None:
        if self.received == 0:
            self.counts.joined += 1
        self.received += nbytes
        self.counts.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.counts.lost += 1
        self.counts.changed.set()


class Counts:
    def __init__(self) -> None:
        self.joined = 0
        self.lost = 0
        self.changed = asyncio.Event()


async def _open_clients(n: int, port: int, ctx: ssl.SSLContext, counts: Counts) -> list[Any]:
    loop = asyncio.get_running_loop()
    hello = _frame_bytes(Hello(PROTOCOL_VERSIONS, FINGERPRINT, (), 1, -1))
    heartbeat = _frame_bytes(Heartbeat(), State.OPEN)
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    peers: list[CountingPeer] = []

    async def one() -> None:
        async with gate:
            peer = CountingPeer(hello, heartbeat, counts)
            await loop.create_connection(
                lambda: peer, "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
            peers.append(peer)
            async with asyncio.timeout(SAFETY_S):
                while not peer.received and not peer.lost:  # its Welcome
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(one() for _ in range(n)))
    return peers


async def _heartbeats(peers: list[CountingPeer]) -> None:
    """Every peer heartbeats every HEARTBEAT_S, spread evenly over the interval.

    Paced by the clock, not by a count of sleeps: while a broadcast floods this one process
    with 10,000 clients' bytes a loop turn takes up to ~0.3 s, and a fixed number of sleeps per
    round then took 28 s, so the server timed out thousands of healthy-but-silent clients.
    """
    due = 0.0  # peers owed a heartbeat since the round began, as a float
    i = 0
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.02)
        now = time.perf_counter()
        due += (now - last) * len(peers) / HEARTBEAT_S
        last = now
        while due >= 1.0:
            peer = peers[i % len(peers)]
            if peer.transport is not None and not peer.lost:
                peer.transport.write(peer.heartbeat)
            i += 1
            due -= 1.0


async def _bare_tls_receiver(port: int, ctx: ssl.SSLContext, total: int) -> float:
    loop = asyncio.get_running_loop()
    counts = Counts()
    peer = CountingPeer(b"", b"", counts)
    await loop.create_connection(
        lambda: peer, "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    async with asyncio.timeout(SAFETY_S):
        while peer.received < total:
            counts.changed.clear()
            await counts.changed.wait()
    assert peer.transport is not None
    peer.transport.close()
    return time.perf_counter()


async def _clients_main(n: int, port: int, pki: PkiPaths, pipe: Pipe) -> None:
    paths = pki.clients["bench-client"]
    ctx = tls.client_context(pki.ca_cert, paths.cert, paths.key)
    loop = asyncio.get_running_loop()
    counts = Counts()
    peers = await _open_clients(n, port, ctx, counts)
    pipe.send(("joined", counts.joined))
    beats = asyncio.create_task(_heartbeats(peers))
    while True:
        order = await loop.run_in_executor(None, pipe.recv)
        if order[0] == "bare_tls":
            pipe.send(("bare_tls_done", await _bare_tls_receiver(order[1], ctx, order[2])))
        elif order[0] == "expect":  # the next broadcast: report when each peer has it all
            nbytes = order[1]
            base = [p.received for p in peers]
            pipe.send(("ready",))
            async with asyncio.timeout(SAFETY_S):
                while any(
                    not p.lost and p.received - b < nbytes for p, b in zip(peers, base, strict=True)
                ):
                    counts.changed.clear()
                    await counts.changed.wait()
            pipe.send(("received", time.perf_counter(), counts.lost))
        else:
            break
    beats.cancel()
    for peer in peers:
        if peer.transport is not None:
            peer.transport.close()
    await asyncio.sleep(0.5)


def clients_process(n: int, port: int, pki: PkiPaths, pipe: Pipe) -> None:
    _raise_fd_limit()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    run(_clients_main(n, port, pki, pipe))


# ------------------------------------------------------------------------------ join prober


async def _probe_main(port: int, pki: PkiPaths, pipe: Pipe) -> None:
    paths = pki.clients["bench-client"]
    ctx = tls.client_context(pki.ca_cert, paths.cert, paths.key)
    times: list[float] = []
    failed = 0
    while not pipe.poll():
        start = time.perf_counter()
        try:  # a join that fails (connect timeout, lost link) is counted, not fatal
            peer = await connect(
                "127.0.0.1", port, ctx, "localhost", timeouts=CLIENT.but(idle_s=SAFETY_S)
            )
            await peer.send(Hello(PROTOCOL_VERSIONS, FINGERPRINT, (), 1, -1))
            await asyncio.wait_for(peer.recv(), SAFETY_S)  # Welcome
            times.append(time.perf_counter() - start)
            await peer.close("probe done")
        except (OSError, TimeoutError, PeerClosed):
            failed += 1
        await asyncio.sleep(0.05)
    pipe.send((times, failed))


def probe_process(port: int, pki: PkiPaths, pipe: Pipe) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    run(_probe_main(port, pki, pipe))


# ------------------------------------------------------------------------------ server side


class BenchServer:
    def __init__(self) -> None:
        self.sessions: dict[int, ClientSession] = {}
        self.lost: dict[str, int] = {}  # how connections ended while the bench ran, by kind
        self.bulk = bulk_gate()  # as the daemon's ServerState holds it

    async def on_peer(self, peer: Peer) -> None:
        await peer.recv()  # Hello
        await peer.send(Welcome(peer.protocol_version, "bench", "gsfs", {}, 0, HEARTBEAT_S))
        session = ClientSession(peer, str(id(peer)), FINGERPRINT, 1, 4, self.bulk)
        session.start()
        self.sessions[id(peer)] = session
        try:
            while True:
                await peer.recv()  # heartbeats are handled inside; nothing else comes
        except PeerClosed as exc:
            if exc.kind != "bye" and not session.closed.is_set():  # the prober says Bye
                self.lost[exc.kind] = self.lost.get(exc.kind, 0) + 1
            elif session.close_reason not in ("", "bye"):  # the session dropped it (why)
                self.lost[session.close_reason] = self.lost.get(session.close_reason, 0) + 1
        finally:
            self.sessions.pop(id(peer), None)
            await session.close("bye")


class LagMeter:
    """How late a TICK_S ticker runs on this loop: what any callback waits behind others."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.marks: list[int] = []  # len(lags) at each broadcast start and end
        self.gc_pauses: list[float] = []  # the cyclic GC runs on the loop's thread too
        self._gc_start = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_start)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            self.lags.append(max(0.0, loop.time() - due))

    def __enter__(self) -> LagMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        gc.callbacks.remove(self._on_gc)


async def _bare_tls(ctx: ssl.SSLContext, pipe: Pipe) -> float:
    """Bytes/s of one TLS connection written as fast as flow control allows, same two loops."""
    loop = asyncio.get_running_loop()
    started: list[float] = []
    chunk = memoryview(np.random.default_rng(1).bytes(1 << 20))

    class Writer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.can = asyncio.Event()
            self.can.set()
            self.pumping = loop.create_task(self.pump())

        def pause_writing(self) -> None:
            self.can.clear()

        def resume_writing(self) -> None:
            self.can.set()

        async def pump(self) -> None:
            started.append(time.perf_counter())
            for _ in range(BARE_TLS_BYTES // len(chunk) + 1):
                await self.can.wait()
                self.transport.write(chunk)  # type: ignore[attr-defined]

    server = await loop.create_server(Writer, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    pipe.send(("bare_tls", port, BARE_TLS_BYTES))
    _, finished = await loop.run_in_executor(None, pipe.recv)
    server.close()
    return BARE_TLS_BYTES / (finished - started[0])


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


async def _one_run(n: int, size_mb: float, broadcasts: int, pki: PkiPaths) -> dict[str, Any]:
    bench = BenchServer()
    ctx = tls.server_context(pki.ca_cert, pki.server_cert, pki.server_key)
    loop = asyncio.get_running_loop()
    tensors = global_state(size_mb)
    # the codec's one-time allocations are not per client; every version below 128 encodes
    # to the same size
    nbytes = (await encode_global(1, tensors)).nbytes
    rss_before = _rss()
    server = await serve(
        bench.on_peer,
        "127.0.0.1",
        0,
        ctx,
        timeouts=SERVER.but(heartbeat_s=HEARTBEAT_S, idle_s=6 * HEARTBEAT_S),
    )
    port = server.sockets[0].getsockname()[1]
    parent, child = mp.Pipe()
    spawn = mp.get_context("spawn")
    clients = spawn.Process(target=clients_process, args=(n, port, pki, child))
    clients.start()
    started = time.perf_counter()
    _, joined = await loop.run_in_executor(None, parent.recv)
    join_all_s = time.perf_counter() - started
    async with asyncio.timeout(SAFETY_S):
        while len(bench.sessions) < n:
            await asyncio.sleep(0.05)
    rss_joined = _rss()
    bare_Bps = await _bare_tls(ctx, parent)

    probe_parent, probe_child = mp.Pipe()
    probe = spawn.Process(target=probe_process, args=(port, pki, probe_child))
    probe.start()
    times, dropped = [], 0
    with LagMeter() as lag:
        for version in range(1, broadcasts + 1):
            parent.send(("expect", nbytes))
            await loop.run_in_executor(None, parent.recv)  # ready
            lag.marks.append(len(lag.lags))
            start = time.perf_counter()
            prepared = await encode_global(version, tensors)
            fan = await fan_out(list(bench.sessions.values()), prepared)
            dropped += len(fan.dropped)
            _, finished, _lost = await loop.run_in_executor(None, parent.recv)
            times.append(finished - start)
            lag.marks.append(len(lag.lags))
    lost = dict(bench.lost)  # connections lost while the broadcasts ran (not at the end)
    probe_parent.send("stop")
    joins, failed_joins = await loop.run_in_executor(None, probe_parent.recv)
    await loop.run_in_executor(None, probe.join, 60)
    rss_after = _rss()
    parent.send(("stop",))
    await loop.run_in_executor(None, clients.join, 120)
    server.close()
    for session in list(bench.sessions.values()):
        await session.close("bench done")
    later = times[1:] or times
    ideal_s = n * nbytes / bare_Bps
    lags_ms = [x * 1000 for x in lag.lags]
    return {
        "clients": n,
        "joined": joined,
        "connect_all_s": round(join_all_s, 2),
        "rss_per_connection_KiB": {
            "joined": round((rss_joined - rss_before) / n / KiB, 1),
            "after_broadcasts": round((rss_after - rss_before) / n / KiB, 1),
        },
        "loop_lag_ms": {
            "max": round(max(lags_ms), 1),
            "p99": round(_pct(lags_ms, 99), 1),
            "max_per_broadcast": [
                round(max(lags_ms[a:b], default=0.0), 1)
                for a, b in zip(lag.marks[::2], lag.marks[1::2], strict=True)
            ],
        },
        "join_ms": {
            "count": len(joins),
            "failed": failed_joins,
            "median": round(statistics.median(joins) * 1000, 1) if joins else None,
            "p95": round(_pct(joins, 95) * 1000, 1),
            "max": round(max(joins) * 1000, 1) if joins else None,
        },
        "message_bytes": nbytes,
        "broadcast_s": [round(t, 3) for t in times],
        "bare_tls_MBps": round(bare_Bps / MB, 1),
        "ideal_broadcast_s": round(ideal_s, 3),
        "ratio_to_bare_tls": round(statistics.median(later) / ideal_s, 3),
        "dropped": dropped,
        "lost": lost,
        "gc_pause_ms_max": round(max(lag.gc_pauses, default=0.0) * 1000, 1),
    }


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1000,10000")
    parser.add_argument("--size-mb", type=float, default=1.0)
    parser.add_argument("--broadcasts", type=int, default=4)
    args = parser.parse_args(argv)
    _raise_fd_limit()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    counts = [int(x) for x in args.clients.split(",")]
    if max(counts) + 100 > limit:
        parser.error(f"open-file limit {limit} is below {max(counts)} clients (+100)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results: dict[str, Any] = {"bench": "scale", "size_mb": args.size_mb, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_federation_pki(Path(tmp), clients=("bench-client",))
        for n in counts:
            res = run(with_gc_pacing(_one_run(n, args.size_mb, args.broadcasts, pki)))
            results["runs"].append(res)
            print(
                f"{n:6d} clients: {res['rss_per_connection_KiB']['joined']} KiB/conn "
                f"({res['rss_per_connection_KiB']['after_broadcasts']} after broadcasts), "
                f"loop lag max {res['loop_lag_ms']['max']} ms, join p95/max "
                f"{res['join_ms']['p95']}/{res['join_ms']['max']} ms, broadcast "
                f"{res['broadcast_s']} s = {res['ratio_to_bare_tls']}x of bare TLS "
                f"({res['bare_tls_MBps']} MB/s), dropped {res['dropped']}, lost {res['lost']}, "
                f"longest GC {res['gc_pause_ms_max']} ms",
                flush=True,
            )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
