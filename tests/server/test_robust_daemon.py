"""The `[robust]` rule in the running daemon: three loopback clients, one of them inflated.

Each client sends the same delta everywhere: 1e-3, 2e-3 and 50e-3 (the third 25 times the
median, well inside the door's norm bound). With rule = "median" the new global model is the
old one plus 2e-3 in every coordinate, for GSFS (the pool, folded at quorum) and for FedAvg
(a synchronous round, each update kept as it arrives). The daemon runs in-process on plain
TCP; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedserver_testkit import ScriptedClient, tiny_settings_dict

from fedllm_server.daemon import Running, start
from fedllm_server.evaluation import CentralModel
from fedllm_server.metrics_log import read_metrics
from fedllm_server.settings import ServerSettings

SIZES = {"low": 1e-3, "mid": 2e-3, "inflated": 50e-3}
STRATEGIES = {
    "gsfs": {
        "name": "gsfs",
        "federation_size_source": "explicit",
        "federation_size": 3,
        "quorum_fraction": 1.0,  # K = 3: all three in one aggregation
    },
    "fedavg": {"name": "fedavg"},
}


async def _until(done: Any, what: str) -> None:
    for _ in range(20_000):  # bounded; the caller's timeout ends it long before
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def _constant_delta(client: ScriptedClient, value: float) -> None:
    def delta() -> dict[str, np.ndarray]:
        return {k: np.full(v.shape, value, np.float32) for k, v in client.global_tensors.items()}

    client.delta = delta  # type: ignore[method-assign]


async def _one_aggregation(running: Running, sync: bool) -> dict[str, np.ndarray]:
    """θ^1 − θ^0 after one aggregation of the three clients' updates."""
    fingerprint = running.state.fingerprint
    clients = []
    for seed, (name, value) in enumerate(SIZES.items()):
        client = ScriptedClient(name, "127.0.0.1", running.port, None, fingerprint, seed=seed)
        _constant_delta(client, value)
        clients.append(client)
    receiving = []
    for client in clients:
        await client.connect()
        receiving.append(asyncio.create_task(client.serve(answer_rounds=sync)))
        await _until(lambda c=client: c.version >= 0, "the initial model")
    initial = {k: v.copy() for k, v in clients[0].global_tensors.items()}
    if not sync:
        for client in clients:
            await client.upload()
    await _until(lambda: running.state.engine.version >= 1, "one aggregation")
    new = running.state.engine.global_tensors
    for client in clients:
        await client.close()
    await asyncio.gather(*receiving)
    return {k: new[k] - initial[k] for k in initial}


def _run(tmp_path: Path, strategy: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    cfg = tiny_settings_dict(tmp_path / "state", None, STRATEGIES[strategy])
    cfg["robust"] = {"rule": "median"}
    cfg["rounds"] = {"min_clients": 3, "local_steps": 1, "deadline_s": 30.0}
    settings = ServerSettings.model_validate(cfg)

    async def run() -> dict[str, np.ndarray]:
        running = await start(settings, CentralModel(settings), install_signals=False)
        try:
            async with asyncio.timeout(60):
                return await _one_aggregation(running, sync=strategy != "gsfs")
        finally:
            running.state.request_stop("test done")
            await asyncio.wait_for(running.wait(), 60)

    steps = asyncio.run(run())
    records = [r for r in read_metrics(settings.metrics_path) if r["kind"] == "aggregation"]
    return steps, records[0]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_the_median_ignores_an_inflated_client(tmp_path: Path, strategy: str) -> None:
    steps, _ = _run(tmp_path, strategy)
    flat = np.concatenate([v.reshape(-1) for v in steps.values()])
    np.testing.assert_allclose(flat, 2e-3, rtol=1e-3)


def test_the_aggregation_record_carries_the_rule(tmp_path: Path) -> None:
    _, record = _run(tmp_path, "gsfs")
    assert (record["robust"]["rule"], sorted(record["robust"]["selected"])) == (
        "median",
        sorted(SIZES),
    )
