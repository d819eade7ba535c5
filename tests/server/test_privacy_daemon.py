"""Central DP in the running daemon: ε in the metrics, and the budget stopping aggregation.

GSFS with K = 2 of N = 2, σ = 0.5 and a budget that one aggregation fits and two do not. Two
loopback clients upload twice: the first quorum publishes version 1 with ε in its metrics
record; the second quorum is refused, and a client that connects afterwards is still served
version 1. The daemon runs in-process on plain TCP; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fedserver_testkit import ScriptedClient, tiny_settings_dict

from fedllm_server.daemon import Running, start
from fedllm_server.evaluation import CentralModel
from fedllm_server.metrics_log import read_metrics
from fedllm_server.privacy import compose, epsilon
from fedllm_server.schedule.gsfs import GsfsSchedule
from fedllm_server.settings import ServerSettings

SIGMA = 0.5
GSFS = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 2}


def _eps(aggregations: int) -> float:
    return epsilon(compose((), SIGMA, 1.0, aggregations), 1e-6)


def _settings(tmp_path: Path) -> ServerSettings:
    cfg = tiny_settings_dict(tmp_path / "state", None, {**GSFS, "quorum_fraction": 1.0})
    cfg["privacy"] = {
        "mode": "central",
        "clip_norm": 0.1,
        "noise_multiplier": SIGMA,
        "expected_weight": 2.0,
        "epsilon_budget": (_eps(1) + _eps(2)) / 2,
    }
    return ServerSettings.model_validate(cfg)


async def _until(done: Any, what: str) -> None:
    for _ in range(20_000):  # bounded; the caller's timeout ends it long before
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def _two_quorums(running: Running) -> tuple[int, int]:
    """(the version after the refused quorum, the version a late client is served)."""
    schedule = running.state.schedule
    assert isinstance(schedule, GsfsSchedule)
    fingerprint = running.state.fingerprint
    clients = [
        ScriptedClient(f"c{i}", "127.0.0.1", running.port, None, fingerprint, seed=i)
        for i in (1, 2)
    ]
    receiving = []
    for client in clients:
        await client.connect()
        receiving.append(asyncio.create_task(client.serve()))
        await _until(lambda c=client: c.version >= 0, "the initial model")
    engine = running.state.engine
    for client in clients:
        await client.upload()
    await _until(lambda: all(c.version >= 1 for c in clients), "version 1 everywhere")
    for client in clients:
        await client.upload()
    # the second quorum was handed to the engine, which refused it and dropped its updates
    await _until(lambda: schedule.aggregations >= 2 and not engine.held, "the refusal")
    late = ScriptedClient("late", "127.0.0.1", running.port, None, fingerprint, seed=9)
    await late.connect()
    receiving.append(asyncio.create_task(late.serve()))
    await _until(lambda: late.version >= 0, "the late client's model")
    for client in [*clients, late]:
        await client.close()
    await asyncio.gather(*receiving)
    return engine.version, late.version


def _run(tmp_path: Path) -> tuple[tuple[int, int], list[dict[str, Any]]]:
    settings = _settings(tmp_path)

    async def run() -> tuple[int, int]:
        running = await start(settings, CentralModel(settings), install_signals=False)
        try:
            async with asyncio.timeout(60):
                return await _two_quorums(running)
        finally:
            running.state.request_stop("test done")
            await asyncio.wait_for(running.wait(), 60)

    versions = asyncio.run(run())
    records = [r for r in read_metrics(settings.metrics_path) if r["kind"] == "aggregation"]
    return versions, records


def test_past_the_budget_the_server_keeps_serving_the_last_version(tmp_path: Path) -> None:
    versions, _ = _run(tmp_path)
    assert versions == (1, 1)


def test_the_metrics_record_carries_epsilon(tmp_path: Path) -> None:
    _, records = _run(tmp_path)
    (record,) = records
    accountant = record["privacy"]["accountant"]
    assert (accountant["federation_epsilon"], sorted(accountant["clients"])) == (
        pytest.approx(_eps(1)),
        ["c1", "c2"],
    )
