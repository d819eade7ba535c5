"""From the daemons' metrics files to a run record: history, upload events, incomplete runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm_experiment.collect import (
    IncompleteRun,
    bytes_by_encoding,
    collect_run,
    history,
    upload_events,
)
from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.deploy import Deployment
from fedllm_experiment.processes import Daemon, Fleet

EVAL = {"accuracy": 0.9, "f1_macro": 0.8, "f1_weighted": 0.9, "precision": 0.8, "recall": 0.8}
SERVER = [
    {"kind": "start", "time": 100.0, "strategy": "gsfs"},
    {
        "kind": "update",
        "time": 101.0,
        "client_id": "client-1",
        "bytes": 10,
        "trigger": "performance",
    },
    {
        "kind": "update",
        "time": 102.0,
        "client_id": "client-2",
        "bytes": 20,
        "trigger": "max_silence",
    },
    {"kind": "aggregation", "time": 103.0, "version": 1, "bytes_out": 60, "evaluation": EVAL},
    {
        "kind": "update",
        "time": 104.0,
        "client_id": "client-1",
        "bytes": 10,
        "trigger": "gradient_norm",
    },
]


def test_history_counts_the_traffic_up_to_each_version() -> None:
    (version,) = history(SERVER)
    assert (version["t_s"], version["uploads"], version["bytes_up"], version["bytes_down"]) == (
        3.0,
        2,
        30,
        60,
    )


def test_upload_events_keep_client_and_trigger() -> None:
    triggers = [(e["client_id"], e["trigger"]) for e in upload_events(SERVER)]
    assert triggers == [
        ("client-1", "performance"),
        ("client-2", "max_silence"),
        ("client-1", "gradient_norm"),
    ]


def test_a_server_that_stopped_short_of_the_last_version_is_an_incomplete_run(
    tmp_path: Path,
) -> None:
    metrics = tmp_path / "server-metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in SERVER))
    server = Daemon("server", ["true"], tmp_path / "server.log")
    dep = Deployment(Fleet(server, []), metrics, tmp_path / "state", {}, 0)
    with pytest.raises(IncompleteRun, match="version 1 of 2"):
        collect_run(ExperimentSettings(rounds=2), "gsfs", dep, wall_s=1.0)


def test_bytes_by_encoding_sums_the_client_upload_records() -> None:
    uploads = [
        {"kind": "upload", "bytes": 100, "encoding": "int8"},
        {"kind": "upload", "bytes": 40, "encoding": "raw"},
        {"kind": "upload", "bytes": 60, "encoding": "int8"},
        {"kind": "upload", "bytes": 7},  # written before encodings were recorded: raw
    ]
    assert bytes_by_encoding(uploads) == {"int8": 160, "raw": 47}
