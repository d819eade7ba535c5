"""In-process daemon over loopback mutual TLS with scripted clients: FedAvg, FedOpt, GSFS."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fedserver_testkit import ScriptedClient, tiny_settings_dict

from fedllm_server.daemon import Running, start
from fedllm_server.durable.checkpoint import CheckpointStore
from fedllm_server.evaluation import CentralModel
from fedllm_server.metrics_log import read_metrics
from fedllm_server.settings import ServerSettings

CLIENTS = ("client-1", "client-2", "client-3")


def _settings(tmp_path: Path, pki: Any, strategy: dict[str, Any], **extra: Any) -> ServerSettings:
    cfg = tiny_settings_dict(tmp_path / "state", pki.federation, strategy, **extra)
    return ServerSettings.model_validate(cfg)


async def _federation(
    settings: ServerSettings, pki: Any, *, gsfs_uploads: int = 0
) -> tuple[int, list[ScriptedClient], Running]:
    running = await start(settings, CentralModel(settings), install_signals=False)
    clients = [
        ScriptedClient(
            name,
            "127.0.0.1",
            running.port,
            pki.client_context(name),
            running.state.fingerprint,
            sample_count=50 * (i + 1),
            seed=i,
        )
        for i, name in enumerate(CLIENTS)
    ]
    for client in clients:
        await client.connect()
    tasks = [asyncio.create_task(c.serve()) for c in clients]
    uploads = [
        asyncio.create_task(c.upload_every(0.05 * (i + 1), gsfs_uploads))
        for i, c in enumerate(clients)
    ]
    code = await asyncio.wait_for(running.wait(), 90)
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    for task in uploads:
        task.cancel()
    return code, clients, running


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def fedavg_run(
    tmp_path_factory: pytest.TempPathFactory, pki: Any
) -> tuple[int, list[ScriptedClient], Path]:
    settings = _settings(
        tmp_path_factory.mktemp("fedavg"),
        pki,
        {"name": "fedavg"},
        stop_after_versions=3,
        rounds={"min_clients": 3, "local_steps": 1, "deadline_s": 10.0},
    )
    code, clients, _ = _run(_federation(settings, pki))
    return code, clients, settings.metrics_path


def test_fedavg_exits_zero_after_stop_after_versions(fedavg_run: Any) -> None:
    assert fedavg_run[0] == 0


def test_fedavg_every_client_receives_every_version(fedavg_run: Any) -> None:
    _, clients, _ = fedavg_run
    assert [c.versions for c in clients] == [[0, 1, 2, 3]] * 3


def test_fedavg_clients_get_bye_at_the_end(fedavg_run: Any) -> None:
    _, clients, _ = fedavg_run
    assert all("stop_after_versions" in c.closed_reason for c in clients)


def test_fedavg_metrics_have_one_record_per_version(fedavg_run: Any) -> None:
    records = read_metrics(fedavg_run[2])
    aggs = [r for r in records if r["kind"] == "aggregation"]
    assert [a["version"] for a in aggs] == [1, 2, 3]


def test_fedavg_weights_follow_sample_counts(fedavg_run: Any) -> None:
    agg = next(r for r in read_metrics(fedavg_run[2]) if r["kind"] == "aggregation")
    assert agg["weights"] == pytest.approx(
        {"client-1": 1 / 6, "client-2": 2 / 6, "client-3": 3 / 6}
    )


def test_fedavg_metrics_record_every_upload(fedavg_run: Any) -> None:
    updates = [r for r in read_metrics(fedavg_run[2]) if r["kind"] == "update"]
    assert sorted((u["client_id"], u["outcome"]) for u in updates) == sorted(
        [(c, "accepted") for c in CLIENTS] * 3
    )


def test_fedavg_central_evaluation_is_recorded(fedavg_run: Any) -> None:
    aggs = [r for r in read_metrics(fedavg_run[2]) if r["kind"] == "aggregation"]
    assert all(0.0 <= a["evaluation"]["accuracy"] <= 1.0 for a in aggs)


def test_fedopt_advances_and_checkpoints_moments(tmp_path: Path, pki: Any) -> None:
    settings = _settings(
        tmp_path,
        pki,
        {"name": "fedopt", "variant": "yogi"},
        stop_after_versions=2,
        rounds={"min_clients": 3, "local_steps": 1, "deadline_s": 10.0},
    )
    code, clients, _ = _run(_federation(settings, pki))
    latest = CheckpointStore(settings.state_dir / "checkpoints").load_latest().checkpoint
    assert latest is not None
    assert (code, clients[0].versions, latest.version) == (0, [0, 1, 2], 2)
    assert latest.metrics["strategy"] == "fedopt-yogi"
    assert latest.strategy_meta["fedopt_step"] == 2
    assert {k.split("/")[0] for k in latest.strategy_arrays} == {"m", "u"}


def test_gsfs_aggregates_at_quorum_and_broadcasts_to_all(tmp_path: Path, pki: Any) -> None:
    strategy = {"name": "gsfs", "quorum_fraction": 0.6, "max_wait_s": 30.0}
    settings = _settings(tmp_path, pki, strategy, stop_after_versions=3)
    code, clients, _ = _run(_federation(settings, pki, gsfs_uploads=40))
    aggs = [r for r in read_metrics(settings.metrics_path) if r["kind"] == "aggregation"]
    assert code == 0
    assert [c.versions[-1] for c in clients] == [3, 3, 3]
    assert all(a["trigger"] == "quorum" and len(a["clients"]) >= 2 for a in aggs)


async def _lopsided(settings: ServerSettings, pki: Any, quiet: str) -> list[ScriptedClient]:
    """All three clients connect; `quiet` never answers or uploads; the others do once each."""
    running = await start(settings, CentralModel(settings), install_signals=False)
    clients = [
        ScriptedClient(
            name,
            "127.0.0.1",
            running.port,
            pki.client_context(name),
            running.state.fingerprint,
            seed=i,
        )
        for i, name in enumerate(CLIENTS)
    ]
    for client in clients:
        await client.connect()
    tasks = [asyncio.create_task(c.serve(answer_rounds=c.name != quiet)) for c in clients]
    if settings.strategy.name == "gsfs":
        await asyncio.sleep(0.2)  # let the initial global model arrive
        await clients[0].upload()
    assert await asyncio.wait_for(running.wait(), 60) == 0
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    return clients


def test_round_deadline_leaves_straggler_out(tmp_path: Path, pki: Any) -> None:
    rounds = {"min_clients": 3, "local_steps": 1, "deadline_s": 1.0}
    settings = _settings(tmp_path, pki, {"name": "fedavg"}, stop_after_versions=1, rounds=rounds)
    asyncio.run(_lopsided(settings, pki, quiet="client-3"))
    records = read_metrics(settings.metrics_path)
    closed = next(r for r in records if r["kind"] == "round")
    agg = next(r for r in records if r["kind"] == "aggregation")
    assert (closed["reason"], closed["stragglers"], agg["trigger"]) == (
        "deadline",
        ["client-3"],
        "deadline",
    )
    assert sorted(agg["clients"]) == ["client-1", "client-2"]


def test_gsfs_times_out_without_quorum(tmp_path: Path, pki: Any) -> None:
    strategy = {"name": "gsfs", "quorum_fraction": 1.0, "max_wait_s": 0.5}
    settings = _settings(tmp_path, pki, strategy, stop_after_versions=1)
    clients = asyncio.run(_lopsided(settings, pki, quiet="client-3"))
    agg = next(r for r in read_metrics(settings.metrics_path) if r["kind"] == "aggregation")
    assert (agg["trigger"], agg["clients"]) == ("timeout", ["client-1"])
    assert [c.versions[-1] for c in clients] == [1, 1, 1]
