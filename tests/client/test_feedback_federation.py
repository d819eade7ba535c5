"""The feedback loop end to end: a GSFS server with `[feedback]` on retunes every client's
trigger over TUNING (mutual TLS on loopback, real daemons), and restores its bandit on restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedllm_server.metrics_log import read_metrics

from .federation import GSFS_OF_THREE as GSFS
from .federation import Federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TRIGGER = {"check_every": 5, "warmup_steps": 10, "min_steps_between_uploads": 10}
NAMES = ("client-1", "client-2", "client-3")
# Two arms and no exploration bonus: the first decision credits arm 0 and must try arm 1.
FEEDBACK = {"enabled": True, "perf_deltas": [0.01, 0.2], "kappas": [2.0], "exploration": 0.0}


@pytest.fixture
def fed(tmp_path: Path, pki: Any) -> Iterator[Federation]:
    federation = Federation(
        tmp_path,
        pki.federation,
        GSFS,
        server_extra={"stop_after_versions": 4, "feedback": FEEDBACK},
    )
    yield federation
    federation.stop_all()


def test_the_server_retunes_every_clients_trigger(fed: Federation) -> None:
    for i, name in enumerate(NAMES):
        fed.start_client(name, i, max_total_steps=200, trigger=TRIGGER)
    fed.wait_connecting(NAMES)
    fed.start_server()
    codes = [fed.wait(name) for name in NAMES]
    assert fed.wait("server") == 0 and codes == [0, 0, 0]
    server = read_metrics(fed.root / "server-state" / "metrics.jsonl")
    decisions = [r for r in server if r.get("kind") == "feedback"]
    assert decisions, "no decision: the central evaluation gave no validation macro-F1"
    first = decisions[0]
    assert first["credited"] == {"perf_delta": 0.01, "kappa": 2.0}
    assert first["chosen"] == {"perf_delta": 0.2, "kappa": 2.0}
    assert first["changed"] and first["sent_to"] == 3
    for name in NAMES:
        applied = fed.events(name, "tuning_applied")
        assert applied, name
        assert (applied[0]["perf_delta"], applied[0]["kappa"]) == (0.2, 2.0)
        assert applied[0]["previous_perf_delta"] == 0.01
    saved = json.loads((fed.root / "server-state" / "feedback.json").read_text())
    assert saved["controller"]["decisions"] == len(decisions)
    assert (fed.root / "server-state" / "feedback.json").stat().st_mode & 0o777 == 0o600
