"""End to end with the REAL server daemon over loopback mutual TLS, every daemon a process:
GSFS (uploads only on triggers, every broadcast applied), FedAvg rounds, a client killed with
SIGKILL and restarted resumes, and clients reconnect with backoff when the server restarts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .federation import GSFS_OF_THREE as GSFS
from .federation import Federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TRIGGER = {
    "check_every": 5,
    "warmup_steps": 10,
    "min_steps_between_uploads": 10,
    "max_silence_steps": 30,
}
NAMES = ("client-1", "client-2", "client-3")


@pytest.fixture
def federation(tmp_path: Path, pki: Any) -> Iterator[Any]:
    made: list[Federation] = []

    def make(strategy: dict[str, Any], **server_extra: Any) -> Federation:
        fed = Federation(tmp_path, pki.federation, strategy, server_extra=server_extra)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.stop_all()


def _server_versions(fed: Federation) -> list[int]:
    from fedllm_server.metrics_log import read_metrics

    records = read_metrics(fed.root / "server-state" / "metrics.jsonl")
    return [int(r["version"]) for r in records if r.get("kind") == "aggregation"]


def test_gsfs_uploads_on_triggers_and_every_client_applies_every_broadcast(federation: Any) -> None:
    fed = federation(GSFS, stop_after_versions=3)
    for i, name in enumerate(NAMES):
        fed.start_client(name, i, max_total_steps=150, trigger=TRIGGER)
    fed.wait_connecting(NAMES)  # a quorum of two must not finish before the third is up
    fed.start_server()
    codes = [fed.wait(name) for name in NAMES]
    final = max(_server_versions(fed))
    for name in NAMES:
        received = [r["version"] for r in fed.events(name, "broadcast_received")]
        applied = [r["version"] for r in fed.events(name, "broadcast_applied")]
        superseded = [r["version"] for r in fed.events(name, "broadcast_superseded")]
        # every version from the first it got to the last is received, and applied unless a
        # newer one arrived before the next step boundary (then the newer one is applied)
        assert received == list(range(received[0], final + 1)), (name, received)
        assert sorted(applied + superseded) == received and applied[-1] == final, name
    uploads = [u for name in NAMES for u in fed.events(name, "upload")]
    checks = [r for name in NAMES for r in fed.events(name, "validation") if r["why"] == "check"]
    finals = sum(len(fed.events(name, "final_upload")) for name in NAMES)
    # each upload is a trigger that fired at a check (its reason recorded), or the one final
    # upload of a client whose budget ran out; most checks do not upload
    triggered = [u for u in uploads if u.get("reason") == u["trigger"]]
    assert len(triggered) + finals == len(uploads)
    # the server recorded a prefix of each client's uploads: one sent while the server's Bye
    # was on its way crosses it and is dropped unread (proto: the side that said Bye drains)
    recorded = {r["update_id"] for r in _server_updates(fed)}
    for name in NAMES:
        sent = [u["update_id"] for u in fed.events(name, "upload")]
        arrived = [i in recorded for i in sent]
        assert len(set(sent)) == len(sent) and arrived[0], name
        assert arrived == sorted(arrived, reverse=True), (name, arrived)
    assert recorded <= {u["update_id"] for u in uploads}
    assert 0 < len(triggered) < len(checks)
    assert codes == [0, 0, 0]


def _server_updates(fed: Federation) -> list[dict[str, Any]]:
    from fedllm_server.metrics_log import read_metrics

    records = read_metrics(fed.root / "server-state" / "metrics.jsonl")
    return [r for r in records if r.get("kind") == "update"]


def test_fedavg_round_trip(federation: Any) -> None:
    fed = federation(
        {"name": "fedavg"},
        stop_after_versions=2,
        rounds={"min_clients": 2, "local_steps": 6, "deadline_s": 60.0},
    )
    fed.start_server()
    for i, name in enumerate(NAMES[:2]):
        fed.start_client(name, i, max_total_steps=100)
    codes = [fed.wait(name) for name in NAMES[:2]]
    for name in NAMES[:2]:
        uploads = fed.events(name, "upload")
        stop = fed.events(name, "stop")[-1]
        assert [u["trigger"] for u in uploads] == ["round", "round"]
        assert stop["steps_used"] == 2 * 6
        assert fed.events(name, "broadcast_applied")[-1]["version"] == 2
    assert codes == [0, 0]


SOLO_GSFS = {**GSFS, "federation_size": 1}


def _solo(federation: Any, **client: Any) -> Any:
    fed = federation(SOLO_GSFS, stop_after_versions=1000)
    fed.start_server()
    fed.start_client("client-1", 0, trigger=TRIGGER, **client)
    return fed


def _steps(fed: Any) -> int:
    steps = fed.events("client-1", "step")
    return int(steps[-1]["step"]) if steps else 0


def test_client_survives_its_own_kill_and_a_server_restart(federation: Any) -> None:
    """SIGKILL + restart resumes from the last commit; a server kill + restart is bridged by
    backoff and reconnect; SIGTERM ends the client cleanly. One federation for all three."""
    fed = _solo(federation, max_total_steps=5000, persist_every_steps=10)
    fed.wait_for(lambda: _steps(fed) >= 60 and fed.events("client-1", "upload"), 120, "client-1")
    fed.kill("client-1")  # SIGKILL: no chance to save anything more
    saved = json.loads((fed.root / "client-1-state" / "state.json").read_text())["counters"]
    fed.start_client("client-1", 0, trigger=TRIGGER, max_total_steps=5000, persist_every_steps=10)
    fed.wait_for(lambda: len(fed.events("client-1", "start")) == 2, 60, "client-1")
    restart = fed.events("client-1", "start")[-1]
    resumed = (restart["resumed"], restart["steps_used"], restart["base_version"])
    assert resumed == (True, saved["steps_used"], saved["base_version"])
    assert saved["steps_used"] >= 10 and saved["base_version"] >= 1

    fed.wait_for(lambda: len(fed.events("client-1", "connected")) == 2, 60, "client-1")
    fed.kill("server")
    time.sleep(1.0)  # the client keeps training and retrying meanwhile
    fed.start_server()
    fed.wait_for(lambda: len(fed.events("client-1", "connected")) == 3, 60, "client-1")
    uploads_before = len(fed.events("client-1", "upload"))
    fed.wait_for(lambda: len(fed.events("client-1", "upload")) > uploads_before, 60, "client-1")
    assert "connect_failed" in fed.tail("client-1", 10_000)

    fed.kill("client-1", 15)  # SIGTERM: persist, Bye, final_eval, exit 0
    assert fed.procs["client-1"].returncode == 0
