"""kill -9 of the real server process mid-round, then a restart: same version, same pool."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from fedserver_testkit import ScriptedClient, ServerProcess, tiny_settings_dict, to_toml

from fedllm_server.metrics_log import read_metrics

pytestmark = pytest.mark.slow  # four real server processes (each imports torch)


async def wait_until(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


def _config(tmp_path: Path, pki: Any, strategy: dict[str, Any], **extra: Any) -> Path:
    cfg = tiny_settings_dict(tmp_path / "state", pki.federation, strategy, **extra)
    path = tmp_path / "server.toml"
    path.write_text(to_toml(cfg))
    return path


def _client(pki: Any, name: str, port: int, fp: str, seed: int, **kw: Any) -> ScriptedClient:
    return ScriptedClient(name, "127.0.0.1", port, pki.client_context(name), fp, seed=seed, **kw)


async def _gsfs_before_crash(pki: Any, port: int, fp: str) -> dict[str, Any]:
    clients = [_client(pki, f"client-{i}", port, fp, seed=i) for i in (1, 2, 3)]
    for c in clients:
        await c.connect()
    tasks = [asyncio.create_task(c.serve()) for c in clients]
    await wait_until(lambda: all(c.version == 0 for c in clients))
    for c in clients:
        await c.upload()
    await wait_until(lambda: all(c.version == 1 for c in clients))
    c1, c2, _ = clients
    await c1.upload()
    await wait_until(lambda: len(c1.acks) == 2)
    last_c1 = await c1.upload()
    c2_uid = await c2.upload()
    await wait_until(lambda: len(c1.acks) == 3 and len(c2.acks) == 2)
    for task in tasks:
        task.cancel()
    return {"c1": c1.sent_deltas[last_c1], "c2": c2.sent_deltas[c2_uid]}


async def _gsfs_after_restart(pki: Any, port: int, fp: str) -> dict[str, np.ndarray]:
    c3 = _client(pki, "client-3", port, fp, seed=33)
    await c3.connect()
    task = asyncio.create_task(c3.serve())
    await wait_until(lambda: c3.version == 1)
    uid = await c3.upload()
    await asyncio.wait_for(task, 60)  # the server stops after version 2: Bye ends serve()
    assert c3.version == 2
    return c3.sent_deltas[uid]


def test_gsfs_kill9_resumes_same_version_and_pool(tmp_path: Path, pki: Any) -> None:
    strategy = {
        "name": "gsfs",
        "quorum_fraction": 1.0,
        "federation_size_source": "explicit",
        "federation_size": 3,
        "max_wait_s": 600.0,
        "frequency_cap": 0,  # every upload counts, so the counts a restart keeps show in α
    }
    config = _config(tmp_path, pki, strategy, stop_after_versions=2)
    server = ServerProcess(config)
    fp = server.fingerprint
    deltas = asyncio.run(_gsfs_before_crash(pki, server.port, fp))
    server.kill9()
    restarted = ServerProcess(config)
    restarted.wait_event("checkpoint_restored", model_version=1, replayed_updates=3)
    deltas["c3"] = asyncio.run(_gsfs_after_restart(pki, restarted.port, fp))
    assert restarted.proc.wait(60) == 0
    ckpt = tmp_path / "state" / "checkpoints"
    before = safetensors.numpy.load_file(str(ckpt / "global-00000001.safetensors"))
    after = safetensors.numpy.load_file(str(ckpt / "global-00000002.safetensors"))
    # f_i over all history: client-1 uploaded 3 times, the others twice -> 3/7, 2/7, 2/7
    for name, value in before.items():
        step = (3 * deltas["c1"][name] + 2 * deltas["c2"][name] + 2 * deltas["c3"][name]) / 7
        np.testing.assert_allclose(after[name], value + step, rtol=1e-5, atol=1e-7)


async def _sync_before_crash(pki: Any, port: int, fp: str) -> None:
    clients = [_client(pki, f"client-{i}", port, fp, seed=i) for i in (1, 2)]
    idle = _client(pki, "client-3", port, fp, seed=3)
    for c in [*clients, idle]:
        await c.connect()
    tasks = [asyncio.create_task(c.serve()) for c in clients]
    tasks.append(asyncio.create_task(idle.serve(answer_rounds=False)))
    await wait_until(lambda: all(len(c.acks) == 1 for c in clients))
    for task in tasks:
        task.cancel()


async def _sync_after_restart(pki: Any, port: int, fp: str) -> ScriptedClient:
    straggler = _client(pki, "client-3", port, fp, seed=3)
    await straggler.connect()
    await asyncio.wait_for(straggler.serve(), 60)
    return straggler


def test_fedavg_kill9_mid_round_keeps_accepted_updates(tmp_path: Path, pki: Any) -> None:
    rounds = {"min_clients": 3, "local_steps": 1, "deadline_s": 120.0}
    config = _config(tmp_path, pki, {"name": "fedavg"}, stop_after_versions=1, rounds=rounds)
    server = ServerProcess(config)
    fp = server.fingerprint
    asyncio.run(_sync_before_crash(pki, server.port, fp))
    server.kill9()
    restarted = ServerProcess(config)
    restarted.wait_event("checkpoint_restored", model_version=0, replayed_updates=2)
    straggler = asyncio.run(_sync_after_restart(pki, restarted.port, fp))
    assert (restarted.proc.wait(60), straggler.versions) == (0, [0, 1])
    records = read_metrics(tmp_path / "state" / "metrics.jsonl")
    agg = next(r for r in records if r["kind"] == "aggregation")
    accepted = sorted(r["client_id"] for r in records if r.get("outcome") == "accepted")
    assert sorted(agg["clients"]) == accepted == ["client-1", "client-2", "client-3"]


def test_sighup_reloads_then_sigterm_drains_and_says_bye(tmp_path: Path, pki: Any) -> None:
    config = _config(tmp_path, pki, {"name": "fedavg"})
    server = ServerProcess(config)
    fp = server.fingerprint

    async def connected_then_term() -> ScriptedClient:
        client = _client(pki, "client-1", server.port, fp, seed=1)
        await client.connect()
        task = asyncio.create_task(client.serve())
        await wait_until(lambda: client.version == 0)
        server.proc.send_signal(signal.SIGHUP)  # reload the revocation list, keep serving
        await asyncio.to_thread(server.wait_event, "revocation_reloaded", 30.0)
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(task, 30)
        return client

    client = asyncio.run(connected_then_term())
    assert (server.proc.wait(30), "sigterm" in client.closed_reason) == (0, True)
