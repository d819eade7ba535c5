"""One metrics-record shape for both daemons (issue 9): the envelope, the two daemons' writers
on real files, and files written before schema 2 read in the new shape."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fedllm_client.metrics_log import MetricsLog as ClientMetrics
from fedllm_core.metrics_record import ENVELOPE, SCHEMA, make_record, read_metrics
from fedllm_server.metrics_log import MetricsLog as ServerMetrics

OLD_CLIENT = {
    "event": "final_eval",
    "ts": "2026-12-07T05:35:39.372+00:00",
    "t": 12.5,
    "client": "client-1",
    "model_version": 3,
    "accuracy": 0.9,
}
OLD_SERVER = [
    {"schema": 1, "kind": "start", "time": 100.0, "strategy": "gsfs"},
    {"schema": 1, "kind": "aggregation", "time": 103.5, "version": 1},
]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_both_daemons_write_the_same_envelope_first(tmp_path: Path) -> None:
    server = ServerMetrics(tmp_path / "server.jsonl")
    server.write("update", client_id="c1", bytes=10)
    server.close()
    client = ClientMetrics(tmp_path / "client.jsonl", "client-1")
    client.model_version = 4
    client.write("upload", bytes=10)
    client.close()
    (s,), (c,) = _lines(tmp_path / "server.jsonl"), _lines(tmp_path / "client.jsonl")
    assert list(s)[: len(ENVELOPE)] == list(c)[: len(ENVELOPE)] == list(ENVELOPE)
    assert (s["schema"], s["daemon"], s["kind"], s["client_id"]) == (
        SCHEMA,
        "server",
        "update",
        "c1",
    )
    assert (c["daemon"], c["kind"], c["client"], c["model_version"]) == (
        "client",
        "upload",
        "client-1",
        4,
    )
    for record in (s, c):
        assert isinstance(record["t"], float) and record["t"] >= 0
        wall = datetime.fromisoformat(str(record["ts"])).timestamp()
        assert wall == pytest.approx(record["time"], abs=1e-3)  # one instant, two spellings


def test_a_field_may_not_reuse_an_envelope_key() -> None:
    with pytest.raises(ValueError, match="time"):
        make_record("server", "start", 1.0, 0.0, {"time": 5})


def test_an_old_client_line_reads_in_the_new_shape(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(OLD_CLIENT) + "\n")
    (record,) = read_metrics(path)
    assert (record["schema"], record["daemon"], record["kind"]) == (SCHEMA, "client", "final_eval")
    assert record["time"] == pytest.approx(1796621739.372)
    assert (record["ts"], record["t"], record["client"], record["accuracy"]) == (
        OLD_CLIENT["ts"],
        12.5,
        "client-1",
        0.9,
    )
    assert "event" not in record


def test_old_server_lines_read_with_t_from_their_start(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    before_start = {"schema": 1, "kind": "update", "time": 99.0}
    path.write_text("".join(json.dumps(r) + "\n" for r in [before_start, *OLD_SERVER]))
    first, start, agg = read_metrics(path)
    assert (first["daemon"], first["kind"], first["t"]) == ("server", "update", None)
    assert (start["t"], agg["t"], agg["version"], agg["schema"]) == (0.0, 3.5, 1, SCHEMA)
    assert agg["ts"] == "1970-01-01T00:01:43.500+00:00"


def test_a_file_continued_after_an_upgrade_reads_whole(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(OLD_CLIENT) + "\n{torn")  # the old daemon was killed mid-line
    log = ClientMetrics(path, "client-1")
    log.write("start", resumed=True)
    log.close()
    kinds = [(r["kind"], r["daemon"], r["schema"]) for r in read_metrics(path)]
    assert kinds == [("final_eval", "client", SCHEMA), ("start", "client", SCHEMA)]
