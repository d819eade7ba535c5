"""Lossy broadcasts end to end: with `[broadcast] encoding = "int8"` every version reaches the
clients as int8 and the server's own θ^v is the decoded model, so the clients' base model and
the server's checkpoint agree bit for bit (real daemons, mutual TLS on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedllm_client.state import StateStore
from fedllm_server.durable.checkpoint import CheckpointStore
from fedllm_server.metrics_log import read_metrics

from .federation import Federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
NAMES = ("client-1", "client-2")
ROUNDS = {"min_clients": 2, "local_steps": 6, "deadline_s": 60.0}


@pytest.fixture
def fed(tmp_path: Path, pki: Any) -> Iterator[Federation]:
    extra = {"stop_after_versions": 2, "rounds": ROUNDS, "broadcast": {"encoding": "int8"}}
    federation = Federation(tmp_path, pki.federation, {"name": "fedavg"}, server_extra=extra)
    yield federation
    federation.stop_all()


def test_clients_hold_the_servers_model_bit_for_bit_after_an_int8_broadcast(
    fed: Federation,
) -> None:
    fed.start_server()
    for i, name in enumerate(NAMES):
        fed.start_client(name, i, max_total_steps=100)
    assert [fed.wait(name) for name in NAMES] == [0, 0]
    assert fed.wait("server") == 0
    server = read_metrics(fed.root / "server-state" / "metrics.jsonl")
    published = [r for r in server if r.get("kind") == "aggregation"]
    assert [r["broadcast_encoding"] for r in published] == ["int8", "int8"]
    final = CheckpointStore(fed.root / "server-state" / "checkpoints").load(2).global_state
    raw_bytes = sum(t.nbytes for t in final.values())
    # the whole int8 message (header and manifest included) is smaller than the raw tensors
    # alone; on this tiny model the header is a large share, on MiniLM's 0.27 of raw
    assert all(r["bytes_out"] < raw_bytes * len(r["sent_to"]) for r in published)
    for name in NAMES:
        state = StateStore(fed.root / f"{name}-state").load()
        assert state is not None and state.base_version == 2 and state.base is not None
        assert state.base.keys() == final.keys()
        for tensor, value in final.items():
            np.testing.assert_array_equal(state.base[tensor], value, err_msg=f"{name}: {tensor}")
