"""`[distill]` in the real server process over loopback mutual TLS: distilled versions served.

Two scripted clients answer two FedAvg rounds. The server trains a tiny cloud teacher at
start-up, distils every new version and stops after version 2. What the clients received must
be the checkpointed, distilled model, not the plain FedAvg mean of their deltas; a restart on
the same state_dir reuses the cached teacher instead of training it again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from fedserver_testkit import TINY_MODEL, ScriptedClient, ServerProcess, tiny_settings_dict, to_toml

from fedllm_server.metrics_log import read_metrics

pytestmark = pytest.mark.slow  # two real server processes (each imports torch)

DISTILL = {
    "enabled": True,
    "teacher_steps": 5,
    "transfer_max": 32,
    "steps": 3,
    "batch_size": 8,
}


def _config(tmp_path: Path, pki: Any) -> Path:
    cfg = tiny_settings_dict(
        tmp_path / "state",
        pki.federation,
        {"name": "fedavg"},
        stop_after_versions=2,
        rounds={"min_clients": 2, "local_steps": 1, "deadline_s": 60.0},
    )
    cfg["distill"] = DISTILL
    # a dotted table header: the kit's TOML writer nests two levels, the teacher model is three
    cfg["distill.model"] = {**TINY_MODEL, "lora_r": 4, "max_length": 128}
    path = tmp_path / "server.toml"
    path.write_text(to_toml(cfg))
    return path


async def _two_rounds(pki: Any, port: int, fingerprint: str) -> list[ScriptedClient]:
    clients = [
        ScriptedClient(name, "127.0.0.1", port, pki.client_context(name), fingerprint, seed=i)
        for i, name in enumerate(("client-1", "client-2"))
    ]
    for client in clients:
        await client.connect()
    models: list[dict[int, dict[str, np.ndarray]]] = [{}, {}]
    for client, seen in zip(clients, models, strict=True):
        _keep_every_model(client, seen)
    await asyncio.wait_for(asyncio.gather(*(c.serve() for c in clients)), 120)
    for client, seen in zip(clients, models, strict=True):
        client.received = seen  # type: ignore[attr-defined]
    return clients


def _keep_every_model(client: ScriptedClient, seen: dict[int, dict[str, np.ndarray]]) -> None:
    """Record each GlobalModel's tensors by version (serve() keeps only the newest)."""
    upload = client.upload

    async def upload_after_recording(round_number: int = -1, update_id: str | None = None) -> str:
        seen[client.version] = {k: v.copy() for k, v in client.global_tensors.items()}
        return await upload(round_number, update_id)

    client.upload = upload_after_recording  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("distill")
    config = _config(tmp_path, pki)
    server = ServerProcess(config)
    clients = asyncio.run(_two_rounds(pki, server.port, server.fingerprint))
    code = server.proc.wait(60)
    restarted = ServerProcess(config)
    restarted.wait_event("server_listening")
    restarted.stop()
    return {
        "code": code,
        "server": server,
        "restarted": restarted,
        "clients": clients,
        "records": read_metrics(tmp_path / "state" / "metrics.jsonl"),
        "checkpoints": tmp_path / "state" / "checkpoints",
    }


def test_the_server_finishes_both_rounds(served: dict[str, Any]) -> None:
    assert (served["code"], [c.version for c in served["clients"]]) == (0, [2, 2])


def test_every_new_version_is_distilled(served: dict[str, Any]) -> None:
    versions = [e["model_version"] for e in served["server"].events if e["event"] == "distilled"]
    assert versions == [1, 2]


def test_clients_receive_the_distilled_model_not_the_mean(served: dict[str, Any]) -> None:
    one, two = served["clients"]
    base, served_v1 = one.received[0], one.received[1]
    u1, u2 = next(iter(one.sent_deltas)), next(iter(two.sent_deltas))
    mean = {k: base[k] + (one.sent_deltas[u1][k] + two.sent_deltas[u2][k]) / 2 for k in base}
    assert not all(np.allclose(served_v1[k], mean[k], atol=1e-7) for k in base)


def test_what_clients_receive_is_the_checkpointed_version(served: dict[str, Any]) -> None:
    saved = safetensors.numpy.load_file(str(served["checkpoints"] / "global-00000002.safetensors"))
    final = served["clients"][0].global_tensors
    assert all(np.array_equal(saved[k], final[k]) for k in saved)


def test_the_aggregation_records_carry_the_kd_report(served: dict[str, Any]) -> None:
    records = [r for r in served["records"] if r["kind"] == "aggregation"]
    assert [sorted(r["distill"]) for r in records] == [sorted(records[0]["distill"])] * 2 and (
        "agreement_after" in records[0]["distill"]
    )


def test_the_teacher_is_trained_once_then_restored(served: dict[str, Any]) -> None:
    sources = [r["source"] for r in served["records"] if r["kind"] == "teacher"]
    assert sources == ["trained", "cache"]


def test_the_restart_logs_the_restored_teacher(served: dict[str, Any]) -> None:
    names = {e["event"] for e in served["restarted"].events}
    assert "teacher_restored" in names and "teacher_trained" not in names
