"""Issue 10, attack 9: a GSFS client that floods the pool with uploads before quorum.

GSFS weighs a pooled update by the client's upload count f_i. Uncapped, 20 uploads before two
honest clients complete the quorum give the attacker α = 20/22. With the default cap of one
counted upload per aggregation period, every pooled client weighs the same. The attacker and
the honest clients are ordinary loopback peers against the in-process daemon; waits are bounded.
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
from fedllm_server.settings import ServerSettings

FLOOD = 20  # the attacker's uploads before quorum (the rate limit allows 30 per minute)
# N = 4 -> K = ceil(0.6·4) = 3: the attacker and two honest clients make the quorum.
GSFS: dict[str, Any] = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 4}


def _settings(tmp_path: Path, strategy: dict[str, Any]) -> ServerSettings:
    cfg = tiny_settings_dict(tmp_path / "state", None, {**GSFS, **strategy})
    return ServerSettings.model_validate(cfg)


async def _until(done: Any, what: str) -> None:
    for _ in range(20_000):  # bounded; the caller's timeout ends it long before
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def _uploads(client: ScriptedClient, count: int) -> asyncio.Task[None]:
    """`count` uploads against version 0, each answered before the next is sent; returns the
    task that receives for `client`."""
    await client.connect()
    receiving = asyncio.create_task(client.serve())
    await _until(lambda: client.version >= 0, f"{client.name} got the model")
    for _ in range(count):
        await client.upload()
        await _until(lambda: len(client.acks) + len(client.rejects) >= client.sent, "an answer")
    assert (len(client.acks), client.rejects) == (count, [])
    return receiving


async def _flood(running: Running) -> None:
    def peer(name: str, seed: int) -> ScriptedClient:
        fingerprint = running.state.fingerprint
        return ScriptedClient(name, "127.0.0.1", running.port, None, fingerprint, seed=seed)

    clients = [peer("attacker", 0), peer("honest-1", 1), peer("honest-2", 2)]
    receiving = [await _uploads(clients[0], FLOOD)]
    for honest in clients[1:]:
        receiving.append(await _uploads(honest, 1))
    await _until(lambda: running.state.engine.version >= 1, "the quorum aggregation")
    for client in clients:
        await client.close()
    await asyncio.gather(*receiving)  # each ends when its connection closes


def _attacker_weight(tmp_path: Path, **strategy: Any) -> float:
    settings = _settings(tmp_path, strategy)

    async def run() -> None:
        running = await start(settings, CentralModel(settings), install_signals=False)
        try:
            async with asyncio.timeout(60):
                await _flood(running)
        finally:
            running.state.request_stop("test done")
            await asyncio.wait_for(running.wait(), 60)

    asyncio.run(run())
    (record,) = [r for r in read_metrics(settings.metrics_path) if r["kind"] == "aggregation"]
    return float(record["weights"]["attacker"])


def test_a_flood_of_uploads_buys_no_gsfs_weight_by_default(tmp_path: Path) -> None:
    assert _attacker_weight(tmp_path) == pytest.approx(1 / 3)


def test_without_the_cap_the_flood_takes_over_the_aggregate(tmp_path: Path) -> None:
    # the paper's uncapped f_i: the attack as reported
    weight = _attacker_weight(tmp_path, frequency_cap=0)
    assert weight == pytest.approx(FLOOD / (FLOOD + 2))
