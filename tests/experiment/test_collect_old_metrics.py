"""Metrics files written before the shared record shape (issue 9) still collect into a run."""

from __future__ import annotations

import json
from pathlib import Path

from fedllm_client.metrics_log import MetricsLog
from fedllm_core.metrics_record import read_metrics
from fedllm_experiment.collect import client_summary, upload_events

EVAL = {"accuracy": 0.9, "f1_macro": 0.8, "f1_weighted": 0.85, "precision": 0.8, "recall": 0.7}
OLD_CLIENT = [
    {"event": "final_eval", "ts": "2026-12-07T05:35:39.372+00:00", "t": 9.0, **EVAL},
    {
        "event": "stop",
        "ts": "2026-12-07T05:35:40.000+00:00",
        "t": 9.6,
        "uploads": 4,
        "steps_used": 40,
        "bytes_up": 1000,
        "bytes_down": 2000,
        "energy": {"joules": None},
    },
]
OLD_SERVER = [
    {"schema": 1, "kind": "start", "time": 100.0},
    {
        "schema": 1,
        "kind": "update",
        "time": 101.25,
        "client_id": "c1",
        "trigger": "round",
        "outcome": "accepted",
        "bytes": 10,
        "base_version": 0,
        "round": 0,
    },
]


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_an_old_client_file_summarises_like_a_new_one(tmp_path: Path) -> None:
    old = client_summary("c1", read_metrics(_write(tmp_path / "old.jsonl", OLD_CLIENT)))
    log = MetricsLog(tmp_path / "new.jsonl", "c1")
    for record in OLD_CLIENT:
        log.write(
            str(record["event"]),
            **{k: v for k, v in record.items() if k not in ("event", "ts", "t")},
        )
    log.close()
    new = client_summary("c1", read_metrics(tmp_path / "new.jsonl"))
    assert old == new
    assert old["final_eval"] == EVAL and (old["uploads"], old["bytes_down"]) == (4, 2000)


def test_an_old_server_file_gives_its_upload_events(tmp_path: Path) -> None:
    (event,) = upload_events(read_metrics(_write(tmp_path / "server.jsonl", OLD_SERVER)))
    assert (event["client_id"], event["trigger"], event["t_s"]) == ("c1", "round", 1.25)
