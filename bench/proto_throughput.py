"""Throughput of the whole wire stack against a bare TLS stream, on loopback.

An update of N MB (float32 tensors, raw encoding) goes client -> server through
``Update`` encode -> Connection -> TLS 1.3 loopback -> decode into a TensorDict, and the server
answers an Ack once it holds the decoded tensors. The same number of bytes then goes through
two bare uvloop TLS connections (write 1 MiB slices + drain; the server discards the bytes,
then acks): one read with asyncio streams, one with recv_into a reused buffer (the fastest
bare receiver). The ratio is against the faster of the two. The server runs in a child
process so each side has its own core; rounds of the three paths are interleaved and the
median is reported. The last line is one JSON object with every figure.

    python bench/proto_throughput.py [--sizes-mb 20 200] [--reps 5] [--encoding raw]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_proto import tls
from fedllm_proto.codec import Encoding
from fedllm_proto.limits import Limits
from fedllm_proto.messages import PROTOCOL_VERSIONS, Ack, Hello, TriggerReason, Update, Welcome
from fedllm_proto.timeouts import SERVER
from fedllm_proto.transport import Peer, connect, run, serve

MB = 1_000_000
BARE_SLICE = 1 << 20
CLIENT = "bench-client"


def make_update(size_mb: int, encoding: Encoding, seed: int = 0) -> Update:
    """~size_mb of float32 spread over 8 tensors (a LoRA-ish layout)."""
    rng = np.random.default_rng(seed)
    per = size_mb * MB // 4 // 8
    tensors = {f"layer{i}.lora": rng.standard_normal(per, dtype=np.float32) for i in range(8)}
    return Update("u", 0, -1, 1, TriggerReason.PERFORMANCE, {}, tensors, encoding)


# ------------------------------------------------------------------------------ server side


async def _stack_peer(peer: Peer) -> None:
    await peer.recv()  # Hello
    await peer.send(Welcome(peer.protocol_version, peer.peer_id or CLIENT, "bench", {}, 0, 5.0))
    while True:
        update = await peer.recv()
        assert isinstance(update, Update)
        await peer.send(Ack(update.update_id, 0))
        del update  # like a server that folded it into its running sum: the buffer is reusable


async def _bare_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        header = await reader.readexactly(8)
        left = int.from_bytes(header, "big")
        while left:
            left -= len(await reader.read(min(left, BARE_SLICE)))
        writer.write(b"k")
        await writer.drain()


class _BareInto(asyncio.BufferedProtocol):
    """The fastest bare receiver we know: recv_into one reused 1 MiB buffer, discard."""

    def __init__(self) -> None:
        self.buf = memoryview(bytearray(BARE_SLICE))
        self.header = bytearray()
        self.left = -1  # -1: reading the 8-byte length

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        want = 8 - len(self.header) if self.left < 0 else min(self.left, BARE_SLICE)
        return self.buf[:want]

    def buffer_updated(self, nbytes: int) -> None:
        if self.left < 0:
            self.header += self.buf[:nbytes]
            if len(self.header) == 8:
                self.left, self.header = int.from_bytes(self.header, "big"), bytearray()
            return
        self.left -= nbytes
        if self.left == 0:
            self.left = -1
            self.transport.write(b"k")


async def _serve_both(pki: PkiPaths, ports: Any) -> None:
    ctx = tls.server_context(pki.ca_cert, pki.server_cert, pki.server_key)
    stack = await serve(
        _stack_peer, "127.0.0.1", 0, ssl_context=ctx, timeouts=SERVER.but(idle_s=None)
    )
    bare = await asyncio.start_server(_bare_conn, "127.0.0.1", 0, ssl=ctx)
    into = await asyncio.get_running_loop().create_server(_BareInto, "127.0.0.1", 0, ssl=ctx)
    ports.send(tuple(s.sockets[0].getsockname()[1] for s in (stack, bare, into)))
    await asyncio.Event().wait()


def _server_main(pki: PkiPaths, ports: Any) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    run(_serve_both(pki, ports))


# ------------------------------------------------------------------------------ client side


async def _stack_round(peer: Peer, update: Update) -> None:
    await peer.send(update)
    assert isinstance(await peer.recv(), Ack)


async def _bare_round(reader: Any, writer: Any, payload: memoryview) -> None:
    writer.write(len(payload).to_bytes(8, "big"))
    for start in range(0, len(payload), BARE_SLICE):
        writer.write(payload[start : start + BARE_SLICE])
        await writer.drain()
    assert await reader.readexactly(1) == b"k"


async def _timed(round_factory: Any) -> float:
    start = time.perf_counter()
    await round_factory()
    return time.perf_counter() - start


async def _compare(rounds: list[Any], reps: int) -> list[float]:
    """Median seconds per round of each path, rounds interleaved so that load from other
    processes on the machine hits every path alike. One warm-up round each first."""
    for one in rounds:
        await one()
    times: list[list[float]] = [[] for _ in rounds]
    for _ in range(reps):
        for one, series in zip(rounds, times, strict=True):
            series.append(await _timed(one))
    return [float(np.median(series)) for series in times]


async def _measure(pki: PkiPaths, ports: tuple[int, int], args: argparse.Namespace) -> dict:
    client = pki.clients[CLIENT]
    ctx = tls.client_context(pki.ca_cert, client.cert, client.key)
    limits = Limits(chunk_bytes=int(args.chunk_mib * (1 << 20)))
    peer = await connect(
        "127.0.0.1", ports[0], ssl_context=ctx, server_hostname="localhost", limits=limits
    )
    await peer.send(Hello(PROTOCOL_VERSIONS, "bench", (), 1))
    await peer.recv()
    streams = [
        await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        for port in ports[1:]
    ]
    results: dict[str, Any] = {}
    for size in args.sizes_mb:
        update = make_update(size, Encoding(args.encoding))
        payload = memoryview(bytes(size * MB))  # same byte count for the bare streams
        rounds: list[Any] = [functools.partial(_stack_round, peer, update)]
        rounds += [functools.partial(_bare_round, r, w, payload) for r, w in streams]
        seconds = await _compare(rounds, args.reps)
        stack, bare_stream, bare_into = (size / s for s in seconds)
        bare = max(bare_stream, bare_into)  # compare against the better bare receiver
        results[f"{size}MB"] = {
            "stack_MBps": round(stack, 1),
            "bare_tls_stream_MBps": round(bare_stream, 1),
            "bare_tls_recv_into_MBps": round(bare_into, 1),
            "ratio_vs_best_bare": round(stack / bare, 3),
        }
        print(
            f"{size:>4} MB stack {stack:7.1f} MB/s | bare TLS: StreamReader {bare_stream:7.1f},"
            f" recv_into {bare_into:7.1f} MB/s | ratio vs best {stack / bare:.3f}"
        )
    await peer.close("done")
    for _reader, writer in streams:
        writer.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--chunk-mib", type=float, default=Limits().chunk_bytes / (1 << 20))
    parser.add_argument("--encoding", default="raw", choices=[e.value for e in Encoding])
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_federation_pki(Path(tmp), clients=(CLIENT,))
        recv_end, send_end = mp.get_context("fork").Pipe(duplex=False)
        server = mp.get_context("fork").Process(target=_server_main, args=(pki, send_end))
        server.start()
        try:
            ports = recv_end.recv()
            results = run(_measure(pki, ports, args))
        finally:
            server.terminate()
            server.join()
    summary = {
        "bench": "proto_throughput",
        "encoding": args.encoding,
        "reps": args.reps,
        "tls": ssl.OPENSSL_VERSION,
        "python": sys.version.split()[0],
        **results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
