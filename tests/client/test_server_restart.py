"""A server restart does not take the fleet down: SIGTERM the real server daemon under three
real client daemons (mutual TLS on loopback, tiny models, GSFS), start it again on the same
state, and every client reconnects with its backoff and carries on with the next global
version; only the server's Bye "finished" at the end makes them exit, with status 0."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from fedllm_server.metrics_log import read_metrics

from .federation import GSFS_OF_THREE as GSFS
from .federation import Federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
NAMES = ("client-1", "client-2", "client-3")
TRIGGER = {"check_every": 5, "warmup_steps": 10, "min_steps_between_uploads": 10}


def _server(fed: Federation, kind: str) -> list[dict[str, Any]]:
    path = fed.root / "server-state" / "metrics.jsonl"
    return [r for r in read_metrics(path) if r.get("kind") == kind] if path.exists() else []


def _after_restart(fed: Federation, name: str) -> list[int]:
    """Versions the client received on connections after its first one."""
    records = fed.metrics(name)
    second = [i for i, r in enumerate(records) if r["kind"] == "connected"][1:2]
    later = records[second[0] :] if second else []
    return [r["version"] for r in later if r["kind"] == "broadcast_received"]


def test_clients_carry_on_through_a_server_sigterm_and_restart(tmp_path: Path, pki: Any) -> None:
    fed = Federation(tmp_path, pki.federation, GSFS)  # no last version: it runs until SIGTERM
    try:
        for i, name in enumerate(NAMES):
            # a budget the run never spends: every client is still training at the restart
            fed.start_client(name, i, max_total_steps=100_000, trigger=TRIGGER)
        fed.wait_connecting(NAMES)  # every client up before the server: none misses the run
        fed.start_server()
        fed.wait_for(lambda: _server(fed, "aggregation"), 240, "server")
        fed.kill("server", signal.SIGTERM)  # drains, says Bye "restarting", exits
        stopped_at = _server(fed, "stop")[-1]["version"]
        server_code = fed.procs["server"].returncode
        fed.server_extra["stop_after_versions"] = stopped_at + 3  # three more, then "finished"
        fed.server_config()
        fed.start_server()  # same port and state: restores version `stopped_at`
        codes = [fed.wait(name, timeout=300) for name in NAMES]
    finally:
        fed.stop_all()
    assert (server_code, codes) == (0, [0, 0, 0])
    for name in NAMES:
        # the client stayed up through the restart, reconnected, got a newer version. Not
        # necessarily stopped_at + 1: a client whose backoff ends after the restarted server
        # published it joins at the current version (seen once on a loaded machine: [4, 5])
        newer = [v for v in _after_restart(fed, name) if v > stopped_at]
        assert newer, (name, _after_restart(fed, name), fed.tail(name))
        assert [r["reason"] for r in fed.events(name, "stop")] == ["bye"], name
