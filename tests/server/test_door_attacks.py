"""Issue 10's attacks on the server's door, by ordinary loopback peers against the daemon.

An Update body far larger than the model (refused at its header, before any body byte), a
sample_count that would take over FedAvg's weights, and a huge delta whose norm must be
logged. The daemon runs in-process on plain TCP; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import numpy as np
from fedserver_testkit import ScriptedClient, run_with_daemon, tiny_settings_dict

from fedllm_proto import frames
from fedllm_proto.connection import Connection, NeedData
from fedllm_proto.errors import ErrorCode
from fedllm_proto.frames import Flags, FrameType
from fedllm_proto.messages import PROTOCOL_VERSIONS, Error, GlobalModel, Hello, Message
from fedllm_proto.states import Role
from fedllm_server.daemon import Running
from fedllm_server.metrics_log import read_metrics
from fedllm_server.settings import ServerSettings

GSFS = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 3}
M = TypeVar("M", bound=Message)


def _settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings.model_validate(tiny_settings_dict(tmp_path / "state", None, GSFS))


def _with_daemon(tmp_path: Path, attack: Callable[[Running], Awaitable[Any]]) -> Any:
    settings = _settings(tmp_path)
    return run_with_daemon(settings, attack)


async def _next(conn: Connection, reader: asyncio.StreamReader, kind: type[M]) -> M:
    for _ in range(100_000):  # bounded; the caller's timeout ends it long before
        event = conn.next_event()
        if isinstance(event, NeedData):
            data = await reader.read(1 << 16)
            conn.receive_data(data, 0.0)
            if not data:
                break
        elif isinstance(event, kind):
            return event
    raise AssertionError(f"connection ended before a {kind.__name__}")


def _oversized_update_header(version: int, body_bytes: int) -> bytes:
    fields = {
        "update_id": "attack-1",
        "base_version": 0,
        "round": -1,
        "sample_count": 10,
        "trigger": "performance",
        "metrics": {},
        "manifest": [["x", "float32", [body_bytes // 4], "raw", body_bytes, 0]],
    }
    payload = msgpack.packb(fields)
    return frames.pack_header(version, FrameType.UPDATE, Flags.NONE, len(payload)) + payload


def test_an_update_far_larger_than_the_model_is_refused_before_its_body(tmp_path: Path) -> None:
    async def attack(running: Running) -> Error:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        conn = Connection(Role.CLIENT)
        hello = Hello(PROTOCOL_VERSIONS, running.state.fingerprint, (), 10, -1, "attacker")
        writer.write(conn.send(hello, 0.0))
        await _next(conn, reader, GlobalModel)
        assert conn.protocol_version is not None
        writer.write(_oversized_update_header(conn.protocol_version, 512 << 20))  # no body
        try:
            return await _next(conn, reader, Error)
        finally:
            writer.close()

    error = _with_daemon(tmp_path, attack)
    assert error.code is ErrorCode.LIMIT_EXCEEDED


def _client(running: Running, **kw: Any) -> ScriptedClient:
    fingerprint = running.state.fingerprint
    return ScriptedClient("client-1", "127.0.0.1", running.port, None, fingerprint, **kw)


async def _one_upload(client: ScriptedClient, delta: dict[str, np.ndarray] | None = None) -> None:
    await client.connect()
    task = asyncio.create_task(client.serve())
    for _ in range(10_000):  # bounded; the caller's timeout ends it long before
        if client.version >= 0:
            break
        await asyncio.sleep(0.01)
    if delta is not None:
        client.delta = lambda: delta  # type: ignore[method-assign]
    answers = len(client.acks) + len(client.rejects)
    await client.upload()
    for _ in range(10_000):
        if len(client.acks) + len(client.rejects) > answers or task.done():
            break
        await asyncio.sleep(0.01)
    await client.close()


def test_an_absurd_sample_count_is_refused_at_the_door(tmp_path: Path) -> None:
    async def attack(running: Running) -> list[str]:
        client = _client(running, sample_count=2**63 - 1)
        await _one_upload(client)
        return [str(r.code) for r in client.rejects]

    assert _with_daemon(tmp_path, attack) == ["unexpected"]


def test_the_door_norm_of_a_huge_delta_is_logged(tmp_path: Path) -> None:
    async def attack(running: Running) -> float:
        client = _client(running)
        await _one_upload(client)  # learns the layout; then a 1e30 delta of that layout
        huge = {k: np.full(v.shape, 1e30, np.float32) for k, v in client.global_tensors.items()}
        await _one_upload(client, huge)
        return math.sqrt(sum(v.size for v in huge.values())) * 1e30

    expected = _with_daemon(tmp_path, attack)
    records = [r for r in read_metrics(_settings(tmp_path).metrics_path) if r["kind"] == "update"]
    assert math.isclose(records[-1]["norm"] or 0.0, expected, rel_tol=1e-5)


def test_a_huge_delta_is_refused_by_the_default_norm_bound(tmp_path: Path) -> None:
    async def attack(running: Running) -> tuple[list[str], float]:
        fingerprint = running.state.fingerprint
        attacker = ScriptedClient("attacker", "127.0.0.1", running.port, None, fingerprint)
        await _one_upload(attacker)  # learns the layout (one honest-looking upload)
        huge = {k: np.full(v.shape, 1e30, np.float32) for k, v in attacker.global_tensors.items()}
        await _one_upload(attacker, huge)
        honest = ScriptedClient("honest", "127.0.0.1", running.port, None, fingerprint, seed=1)
        await _one_upload(honest)  # with the attacker's first upload: quorum K=2, version 1
        for _ in range(10_000):  # bounded; the timeout of _with_daemon ends it long before
            if running.state.engine.version >= 1:
                break
            await asyncio.sleep(0.01)
        peak = max(float(np.abs(v).max()) for v in running.state.engine.global_tensors.values())
        return [str(r.code) for r in attacker.rejects], peak

    codes, peak = _with_daemon(tmp_path, attack)
    assert (codes, peak < 1e3) == (["norm_too_large"], True)
