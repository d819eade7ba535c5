"""Misbehaving peers against an in-process daemon over loopback mTLS: the run completes.

One client misbehaves (NaNs, wrong shapes, replays, floods, dies mid-upload, connects twice,
or speaks for another model) while two honest GSFS clients drive the federation to
`stop_after_versions`; each test checks both the misbehaviour's outcome and that the honest
clients received every version.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fedserver_testkit import Faults, ScriptedClient, tiny_settings_dict

from fedllm_proto.errors import ProtocolError
from fedllm_proto.messages import Reject, RejectCode, TriggerReason, Update
from fedllm_proto.transport import PeerClosed
from fedllm_server.daemon import Running, start
from fedllm_server.evaluation import CentralModel
from fedllm_server.metrics_log import read_metrics
from fedllm_server.settings import ServerSettings

HONEST = ("client-1", "client-2")
BAD = "client-3"
GSFS = {
    "name": "gsfs",
    "quorum_fraction": 0.5,
    "federation_size_source": "explicit",
    "federation_size": 3,
    "max_wait_s": 30.0,
}


async def wait_until(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def _settings(tmp_path: Path, pki: Any, **extra: Any) -> ServerSettings:
    cfg = tiny_settings_dict(
        tmp_path / "state", pki.federation, GSFS, stop_after_versions=3, **extra
    )
    return ServerSettings.model_validate(cfg)


def _client(pki: Any, running: Running, name: str, seed: int, **kw: Any) -> ScriptedClient:
    return ScriptedClient(
        name,
        "127.0.0.1",
        running.port,
        pki.client_context(name),
        running.state.fingerprint,
        seed=seed,
        **kw,
    )


async def _with_honest(
    settings: ServerSettings, pki: Any, misbehave: Callable[[Running], Awaitable[Any]]
) -> tuple[int, list[ScriptedClient], Any]:
    """Start the daemon, let `misbehave` run, then let two honest clients finish the run."""
    running = await start(settings, CentralModel(settings), install_signals=False)
    outcome = await misbehave(running)
    honest = [_client(pki, running, name, seed=i) for i, name in enumerate(HONEST)]
    for c in honest:
        await c.connect()
    tasks = [asyncio.create_task(c.serve()) for c in honest]
    uploads = [asyncio.create_task(c.upload_per_version(3)) for c in honest]
    code = await asyncio.wait_for(running.wait(), 60)
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    for task in uploads:
        task.cancel()
    return code, honest, outcome


def _codes(client: ScriptedClient) -> list[str]:
    return [str(r.code) for r in client.rejects]


def _assert_run_completed(code: int, honest: list[ScriptedClient]) -> None:
    assert (code, [c.version for c in honest]) == (0, [3, 3])


async def _bad_uploads(running: Running, pki: Any, faults: Faults, n: int) -> ScriptedClient:
    bad = _client(pki, running, BAD, seed=9, faults=faults)
    await bad.connect()
    task = asyncio.create_task(bad.serve())
    await wait_until(lambda: bad.version == 0)
    for _ in range(n):
        await bad.upload()
    await wait_until(lambda: len(bad.rejects) + len(bad.acks) >= n or task.done())
    return bad


def test_nan_update_is_rejected_as_non_finite(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> ScriptedClient:
        return await _bad_uploads(running, pki, Faults(nan=True), 2)

    code, honest, bad = asyncio.run(_with_honest(_settings(tmp_path, pki), pki, misbehave))
    _assert_run_completed(code, honest)
    assert _codes(bad) == ["non_finite", "non_finite"]


def test_wrong_shape_is_rejected_as_tensor_mismatch(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> ScriptedClient:
        return await _bad_uploads(running, pki, Faults(wrong_shape=True), 1)

    code, honest, bad = asyncio.run(_with_honest(_settings(tmp_path, pki), pki, misbehave))
    _assert_run_completed(code, honest)
    assert _codes(bad) == ["tensor_mismatch"]


def test_replayed_update_is_rejected_and_counted_once(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> ScriptedClient:
        return await _bad_uploads(running, pki, Faults(replay=True), 1)

    settings = _settings(tmp_path, pki)
    code, honest, bad = asyncio.run(_with_honest(settings, pki, misbehave))
    _assert_run_completed(code, honest)
    accepted = [
        r
        for r in read_metrics(settings.metrics_path)
        if r["kind"] == "update" and r["client_id"] == BAD and r["outcome"] == "accepted"
    ]
    assert (_codes(bad), len(accepted)) == (["replay"], 1)


def test_flooding_client_is_rate_limited_then_disconnected(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> ScriptedClient:
        bad = await _bad_uploads(running, pki, Faults(), 12)
        await wait_until(lambda: bool(bad.closed_reason))
        return bad

    validation = {"rate_limit_updates": 4, "rate_limit_window_s": 600.0}
    settings = _settings(tmp_path, pki, validation=validation, max_rejects=5)
    code, honest, bad = asyncio.run(_with_honest(settings, pki, misbehave))
    _assert_run_completed(code, honest)
    outcomes = [
        (r["outcome"], r["code"])
        for r in read_metrics(settings.metrics_path)
        if r["kind"] == "update" and r["client_id"] == BAD
    ]
    assert outcomes == [("accepted", None)] * 4 + [("rejected", "rate_limited")] * 5
    # The Error frame is best effort: the flood still in flight may turn the close into a RST.
    assert bad.closed_reason


def test_wrong_fingerprint_is_refused_at_hello(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> Any:
        bad = _client(pki, running, BAD, seed=9)
        bad.fingerprint = "0" * 64
        return await bad.connect()

    code, honest, reply = asyncio.run(_with_honest(_settings(tmp_path, pki), pki, misbehave))
    _assert_run_completed(code, honest)
    assert isinstance(reply, Reject) and reply.code == RejectCode.FINGERPRINT_MISMATCH


def test_second_connection_replaces_the_first(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> tuple[ScriptedClient, ScriptedClient]:
        first, second = (_client(pki, running, BAD, seed=s) for s in (1, 2))
        await first.connect()
        first_task = asyncio.create_task(first.serve())
        await wait_until(lambda: first.version == 0)
        await second.connect()
        asyncio.create_task(second.serve())  # noqa: RUF006  ends with the server's Bye
        await asyncio.wait_for(first_task, 10)
        return first, second

    code, honest, (first, second) = asyncio.run(
        _with_honest(_settings(tmp_path, pki), pki, misbehave)
    )
    _assert_run_completed(code, honest)
    assert ("replaced" in first.closed_reason, second.version) == (True, 3)


def test_client_killed_mid_upload_loses_nothing_else(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> ScriptedClient:
        bad = _client(pki, running, BAD, seed=9)
        await bad.connect()
        asyncio.create_task(bad.serve())  # noqa: RUF006  ends when we abort the socket
        await wait_until(lambda: bad.version == 0)
        assert bad.peer is not None
        update = Update("torn-1", 0, -1, 10, TriggerReason.PERFORMANCE, {}, bad.delta())
        conn = bad.peer.connection
        frames = b"".join(bytes(b) for b in conn.send_buffers(update, time.monotonic()))
        transport = bad.peer._proto.transport  # the test peer dies mid-write, on purpose
        assert transport is not None
        transport.write(frames[: len(frames) // 2])
        transport.abort()
        await asyncio.sleep(0.3)
        return bad

    settings = _settings(tmp_path, pki)
    code, honest, _ = asyncio.run(_with_honest(settings, pki, misbehave))
    _assert_run_completed(code, honest)
    updates = [r for r in read_metrics(settings.metrics_path) if r["kind"] == "update"]
    assert all(u["client_id"] in HONEST for u in updates)


def test_revoked_client_is_refused(tmp_path: Path, pki: Any) -> None:
    async def misbehave(running: Running) -> str:
        revoked = _client(pki, running, pki.revoked_client, seed=9)
        try:
            await revoked.connect()
        except (PeerClosed, ConnectionError, ssl.SSLError, ProtocolError) as exc:
            return type(exc).__name__
        return "admitted"

    code, honest, outcome = asyncio.run(_with_honest(_settings(tmp_path, pki), pki, misbehave))
    _assert_run_completed(code, honest)
    assert outcome != "admitted"


@pytest.fixture
def corrupted_restart(tmp_path: Path, pki: Any) -> Running:
    settings = _settings(tmp_path, pki)
    code, _, _ = asyncio.run(_with_honest(settings, pki, lambda running: asyncio.sleep(0)))
    assert code == 0
    newest = settings.state_dir / "checkpoints" / "global-00000003.safetensors"
    newest.write_bytes(newest.read_bytes()[:-16])  # a torn write / bit rot

    async def restart() -> Running:
        running = await start(settings, CentralModel(settings), install_signals=False)
        running.state.request_stop("test")
        await running.wait()
        return running

    return asyncio.run(restart())


def test_corrupted_checkpoint_falls_back_to_previous(corrupted_restart: Running) -> None:
    assert corrupted_restart.state.engine.version == 2
