"""Time to broadcast one global model to 10, 100 and 500 connected loopback clients.

The server side is the daemon's own broadcast path: every connection gets a real
`ClientSession` (bounded outbox + writer task) after a Hello/Welcome handshake, and a
broadcast is `encode_global` (encode ONCE, in a worker thread) + `fan_out` (the same
`PreparedMessage` queued to every session). The clients live in a child process (its own core,
one uvloop holding every connection); each one decodes the GlobalModel, and the child reports
when all of them hold the new version. A broadcast's time runs from the start of encoding to
that report: encode + N sends + N decodes. Plain TCP and mutual TLS 1.3 (one client certificate
shared by every connection: the bench measures bytes, not identities).

The first broadcast to a fresh set of connections is reported apart from the rest: it is the one
that grows every socket buffer and touches every receive buffer for the first time (on the 2-core
development VM a never-touched page costs several microseconds, and the first broadcast of
4 MB to 500 clients took 2-6x as long as the later ones). ``median_s`` is over the later
broadcasts, which reuse that memory, as a daemon's every broadcast after its first does. Last
line: one JSON object.

    python bench/broadcast.py [--clients 10,100,500] [--size-mb 4] [--repeats 5] [--modes plain,tls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_proto import tls
from fedllm_proto.messages import PROTOCOL_VERSIONS, GlobalModel, Hello, Welcome
from fedllm_proto.timeouts import CLIENT, SERVER
from fedllm_proto.transport import Peer, PeerClosed, connect, run, serve
from fedllm_server.broadcast import encode_global, fan_out
from fedllm_server.session import ClientSession, bulk_gate

MB = 1_000_000
FINGERPRINT = "bench"


def global_state(size_mb: float, seed: int = 0) -> dict[str, np.ndarray]:
    """~size_mb of float32 in 16 tensors (a LoRA-adapter-like layout)."""
    rng = np.random.default_rng(seed)
    per = int(size_mb * MB) // 4 // 16
    return {f"layer{i}.lora_A": rng.standard_normal(per, dtype=np.float32) for i in range(16)}


# ------------------------------------------------------------------------------ client process


async def _client(
    host: str, port: int, ctx: Any, got: dict[int, int], changed: asyncio.Event
) -> None:
    peer = await connect(host, port, ctx, "localhost", timeouts=CLIENT.but(idle_s=120.0))
    await peer.send(Hello(PROTOCOL_VERSIONS, FINGERPRINT, (), 1, -1))
    await peer.recv()  # Welcome
    try:
        while True:
            msg = await peer.recv()
            if isinstance(msg, GlobalModel):
                got[msg.version] = got.get(msg.version, 0) + 1
                changed.set()
    except PeerClosed:
        return
    finally:
        changed.set()  # let the reporter notice that every client has finished


async def _clients_main(n: int, port: int, pki: PkiPaths | None, pipe: Pipe) -> None:
    ctx = None
    if pki is not None:
        paths = pki.clients["bench-client"]
        ctx = tls.client_context(pki.ca_cert, paths.cert, paths.key)
    got: dict[int, int] = {}
    changed = asyncio.Event()
    tasks = []
    for _ in range(n):  # connect one by one: a burst of 500 TLS handshakes is not the point
        tasks.append(asyncio.create_task(_client("127.0.0.1", port, ctx, got, changed)))
        await asyncio.sleep(0)
    reported: set[int] = set()
    while True:
        await changed.wait()
        changed.clear()
        for version, count in got.items():
            if count == n and version not in reported:
                reported.add(version)
                pipe.send(version)
        if all(t.done() for t in tasks):
            return


def clients_process(n: int, port: int, pki: PkiPaths | None, pipe: Pipe) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    run(_clients_main(n, port, pki, pipe))


# ------------------------------------------------------------------------------ server side


class BenchServer:
    def __init__(self) -> None:
        self.sessions: dict[int, ClientSession] = {}
        self.joined = asyncio.Event()
        self.want = 0
        self.bulk = bulk_gate()  # shared by every session, as the daemon's ServerState holds it

    async def on_peer(self, peer: Peer) -> None:
        await peer.recv()  # Hello
        await peer.send(Welcome(peer.protocol_version, "bench", "bench", {}, 0, 5.0))
        session = ClientSession(peer, str(id(peer)), FINGERPRINT, 1, 4, self.bulk)
        session.start()
        self.sessions[id(peer)] = session
        if len(self.sessions) >= self.want:
            self.joined.set()
        await session.closed.wait()


async def _one_mode(n: int, size_mb: float, repeats: int, pki: PkiPaths | None) -> dict[str, Any]:
    bench = BenchServer()
    bench.want = n
    ctx = None if pki is None else tls.server_context(pki.ca_cert, pki.server_cert, pki.server_key)
    server = await serve(bench.on_peer, "127.0.0.1", 0, ctx, timeouts=SERVER.but(idle_s=120.0))
    port = server.sockets[0].getsockname()[1]
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=clients_process, args=(n, port, pki, child))
    proc.start()
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(bench.joined.wait(), 300)
    tensors = global_state(size_mb)
    times, nbytes = [], 0
    for version in range(1, repeats + 1):
        start = time.perf_counter()
        prepared = await encode_global(version, tensors)
        fan = await fan_out(bench.sessions.values(), prepared)
        assert not fan.dropped, fan.dropped
        done = await loop.run_in_executor(None, parent.recv)
        times.append(time.perf_counter() - start)
        assert done == version
        nbytes = prepared.nbytes
    for session in list(bench.sessions.values()):
        await session.close("bench done")
    server.close()
    await loop.run_in_executor(None, proc.join, 60)
    later = times[1:] or times
    return {
        "clients": n,
        "encoded_bytes": nbytes,
        "seconds": times,
        "first_s": times[0],
        "median_s": statistics.median(later),
        "aggregate_MBps": nbytes * n / statistics.median(later) / MB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,100,500")
    parser.add_argument("--size-mb", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5, help="broadcasts per client count")
    parser.add_argument("--modes", default="plain,tls")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    results: dict[str, Any] = {"size_mb": args.size_mb, "repeats": args.repeats, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_federation_pki(Path(tmp), clients=("bench-client",))
        for mode in args.modes.split(","):
            for n in (int(x) for x in args.clients.split(",")):
                res = run(_one_mode(n, args.size_mb, args.repeats, pki if mode == "tls" else None))
                res["mode"] = mode
                results["runs"].append(res)
                print(
                    f"{mode:5s} {n:4d} clients: first {res['first_s']:.3f} s, then median "
                    f"{res['median_s']:.3f} s ({res['aggregate_MBps']:.0f} MB/s delivered)",
                    flush=True,
                )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
