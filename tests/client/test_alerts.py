"""The ECS documents classify writes: verdicts, severities and every documented field, on a
real Zeek record (the IRC C&C flow of IoT-23 capture 34-1) and on records with unset fields."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pytest

from fedllm_client.alerts import Context, Verdict, decide, flow_document, severity

BINARY = ("Benign", "Malicious")
MULTI = ("Benign", "C&C", "PartOfAHorizontalPortScan")
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
CTX = Context(threshold=0.5, model_version=7, which="global", observer="edge-1", version="0.1.0")
IRC: dict[str, Any] = {
    "ts": "1545404132.353979",
    "uid": "CnkuiE1ejnVWSFRkzg",
    "id.orig_h": "192.168.1.195",
    "id.orig_p": "48986",
    "id.resp_h": "185.244.25.235",
    "id.resp_p": "6667",
    "proto": "tcp",
    "service": "irc",
    "duration": "3.107733",
    "orig_bytes": "0",
    "resp_bytes": "0",
    "conn_state": "S0",
    "history": "S",
    "orig_pkts": "3",
    "orig_ip_bytes": "180",
    "resp_pkts": "0",
    "resp_ip_bytes": "0",
}


def _doc(probs: list[float], record: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    verdict = decide(np.array(probs), BINARY, CTX.threshold)
    return flow_document(record or IRC, verdict, CTX, latency_ms=1.25, now=NOW, **kw)


def test_p_malicious_below_the_threshold_is_benign_and_no_alert() -> None:
    assert decide(np.array([0.6, 0.4]), BINARY, 0.5) == Verdict("Benign", 0.6, 0.4, False)


def test_p_malicious_at_the_threshold_is_an_alert() -> None:
    assert decide(np.array([0.25, 0.75]), BINARY, 0.75).alert


def test_multiclass_alert_names_the_likeliest_malicious_class_even_when_benign_is_argmax() -> None:
    verdict = decide(np.array([0.4, 0.35, 0.25]), MULTI, 0.5)
    assert (verdict.label, verdict.alert, round(verdict.p_malicious, 6)) == ("C&C", True, 0.6)


@pytest.mark.parametrize(
    ("p_malicious", "expected"),
    [(0.995, ("critical", 99)), (0.96, ("high", 73)), (0.85, ("medium", 47)), (0.6, ("low", 21))],
)
def test_severity_bands(p_malicious: float, expected: tuple[str, int]) -> None:
    assert severity(Verdict("Malicious", p_malicious, p_malicious, True)) == expected


def test_a_flow_that_is_no_alert_has_severity_none() -> None:
    assert severity(Verdict("Benign", 0.9, 0.1, False)) == ("none", 0)


def test_alert_document_has_the_ecs_event_fields() -> None:
    event = _doc([0.02, 0.98])["event"]
    assert (event["kind"], event["severity"], event["category"], event["id"]) == (
        "alert",
        73,
        ["network", "intrusion_detection"],
        "CnkuiE1ejnVWSFRkzg",
    )


def test_a_benign_flow_is_an_event_not_an_alert() -> None:
    assert _doc([0.9, 0.1])["event"]["kind"] == "event"


def test_timestamp_is_the_flow_time_in_iso_8601_utc() -> None:
    assert _doc([0.1, 0.9])["@timestamp"] == "2018-12-21T14:55:32.353979Z"


def test_a_garbled_ts_falls_back_to_the_time_of_classification() -> None:
    assert _doc([0.1, 0.9], {**IRC, "ts": "yesterday"})["@timestamp"] == NOW.strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def test_endpoints_network_and_duration() -> None:
    doc = _doc([0.1, 0.9])
    got = (doc["source"], doc["destination"], doc["network"], doc["event"]["duration"])
    assert got == (
        {"ip": "192.168.1.195", "port": 48986, "bytes": 180, "packets": 3},
        {"ip": "185.244.25.235", "port": 6667, "bytes": 0, "packets": 0},
        {"transport": "tcp", "protocol": "irc", "bytes": 180, "packets": 3},
        3_107_733_000,
    )


def test_the_fedllm_section_carries_the_model_verdict() -> None:
    assert _doc([0.1, 0.9], true_label="Malicious")["fedllm"] == {
        "label": "Malicious",
        "p": 0.9,
        "p_malicious": 0.9,
        "threshold": 0.5,
        "severity": "medium",
        "model_version": 7,
        "model": "global",
        "latency_ms": 1.25,
        "true_label": "Malicious",
    }


def test_rule_and_observer_name_the_detector() -> None:
    doc = _doc([0.1, 0.9])
    assert (doc["rule"]["name"], doc["rule"]["version"], doc["observer"]["name"]) == (
        "Malicious",
        "7",
        "edge-1",
    )


def test_the_keys_written_before_ecs_stay_at_the_top_level() -> None:
    doc = _doc([0.1, 0.9], true_label="Malicious")
    legacy = {k: doc[k] for k in ("uid", "ts", "orig_h", "resp_h", "label", "p", "model_version")}
    assert legacy == {
        "uid": "CnkuiE1ejnVWSFRkzg",
        "ts": 1545404132.353979,
        "orig_h": "192.168.1.195",
        "resp_h": "185.244.25.235",
        "label": "Malicious",
        "p": 0.9,
        "model_version": 7,
    }


def test_unset_zeek_fields_are_left_out_not_written_as_dashes() -> None:
    bare = {**IRC, "service": "-", "id.resp_p": "-", "orig_pkts": float("nan")}
    doc = _doc([0.1, 0.9], bare)
    assert ("protocol" in doc["network"], "port" in doc["destination"]) == (False, False)


def test_the_document_is_strict_json() -> None:
    bare = {k: float("nan") for k in ("duration", "orig_pkts", "orig_ip_bytes")}
    text = json.dumps(_doc([0.1, 0.9], {**IRC, **bare}), allow_nan=False)
    assert json.loads(text)["source"] == {"ip": "192.168.1.195", "port": 48986}


def test_message_reads_as_one_line_for_an_analyst() -> None:
    assert _doc([0.1, 0.9])["message"] == (
        "Malicious tcp flow 192.168.1.195:48986 -> 185.244.25.235:6667 (irc): "
        "P(malicious) 0.900 >= 0.5"
    )
