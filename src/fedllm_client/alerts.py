"""One JSON document per classified flow, in Elastic Common Schema shape (docs/alerts.md).

Rules: pure functions, no I/O and no clock (``now`` is an argument). Field names are ECS 8.11
(``@timestamp``, ``event.*``, ``source.*``, ``destination.*``, ``network.*``, ``rule.*``,
``observer.*``) as nested objects; what ECS has no name for lives under ``fedllm.*`` (and the
Zeek specifics under ``zeek.*``, as Elastic's own Zeek integration names them). A flow is an
alert (``event.kind = "alert"``) when P(malicious) = 1 - P(Benign) reaches the threshold; its
label is then the likeliest malicious class, else ``Benign``. The keys the classifier wrote
before this schema (``uid``, ``ts``, ``orig_h``, ``resp_h``, ``label``, ``p``, ``latency_ms``,
``model_version``, ``true_label``) stay at the top level, so older consumers keep working.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ECS_VERSION = "8.11.0"
BENIGN_ID = 0  # class 0 is Benign in every task (fedllm_core.data.labels)
# (lowest P(malicious), name, ECS event.severity): Elastic Security's 21/47/73/99 scale
SEVERITIES: tuple[tuple[float, str, int], ...] = (
    (0.99, "critical", 99),
    (0.95, "high", 73),
    (0.80, "medium", 47),
    (0.0, "low", 21),
)
_UNSET = frozenset({"", "-", "(empty)", "nan"})
Record = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the model says about one flow."""

    label: str  # Benign below the threshold, else the likeliest malicious class
    p: float  # the model's probability of ``label``
    p_malicious: float  # 1 - P(Benign)
    alert: bool


@dataclass(frozen=True, slots=True)
class Context:
    """What every document of one classify run shares."""

    threshold: float
    model_version: int
    which: str  # "global" or "local": the state directory's model used
    observer: str | None  # the client's name (settings.client_name)
    version: str  # fedllm's own version


def decide(probs: np.ndarray, labels: Sequence[str], threshold: float) -> Verdict:
    """The verdict of one flow from its class probabilities ``probs`` (C,)."""
    p_malicious = float(1.0 - probs[BENIGN_ID])
    if p_malicious >= threshold and len(labels) > 1:
        best = BENIGN_ID + 1 + int(np.argmax(probs[BENIGN_ID + 1 :]))
        return Verdict(labels[best], float(probs[best]), p_malicious, True)
    return Verdict(labels[BENIGN_ID], float(probs[BENIGN_ID]), p_malicious, False)


def severity(verdict: Verdict) -> tuple[str, int]:
    """(name, ECS ``event.severity``) of an alert; ("none", 0) for a flow that is not one."""
    if not verdict.alert:
        return "none", 0
    for low, name, score in SEVERITIES:
        if verdict.p_malicious >= low:
            return name, score
    return SEVERITIES[-1][1:]  # pragma: no cover - the last band starts at 0


def flow_document(
    record: Record,
    verdict: Verdict,
    ctx: Context,
    *,
    latency_ms: float,
    now: dt.datetime,
    true_label: str | None = None,
) -> dict[str, Any]:
    """The ECS document of one classified flow (plus the legacy top-level keys)."""
    sev_name, sev_score = severity(verdict)
    ts = _number(record.get("ts"))
    doc: dict[str, Any] = {
        "@timestamp": _iso(_flow_time(ts) or now),
        "message": _message(record, verdict, ctx.threshold),
        "ecs": {"version": ECS_VERSION},
        "event": _event(record, verdict, sev_score, now),
        "source": _endpoint(record, "orig"),
        "destination": _endpoint(record, "resp"),
        "network": _network(record),
        "observer": _drop_none(
            {"vendor": "fedllm", "product": "fedllm", "type": "ids", "version": ctx.version}
            | {"name": ctx.observer}
        ),
        "rule": {
            "id": "fedllm.classify",
            "name": verdict.label,
            "ruleset": "fedllm",
            "version": str(ctx.model_version),
        },
        "zeek": _zeek(record),
        "fedllm": _drop_none(
            {
                "label": verdict.label,
                "p": round(verdict.p, 4),
                "p_malicious": round(verdict.p_malicious, 4),
                "threshold": ctx.threshold,
                "severity": sev_name,
                "model_version": ctx.model_version,
                "model": ctx.which,
                "latency_ms": round(latency_ms, 3),
                "true_label": true_label,
            }
        ),
    }
    doc.update(_legacy(record, verdict, ctx, ts, latency_ms, true_label))
    return doc


def _event(record: Record, verdict: Verdict, sev: int, now: dt.datetime) -> dict[str, Any]:
    kinds = ["network", "intrusion_detection"] if verdict.alert else ["network"]
    types = ["connection", "info"] if verdict.alert else ["connection"]
    duration = _number(record.get("duration"))
    return _drop_none(
        {
            "kind": "alert" if verdict.alert else "event",
            "category": kinds,
            "type": types,
            "module": "fedllm",
            "dataset": "fedllm.classify",
            "severity": sev,
            "id": _text(record.get("uid")),
            "created": _iso(now),
            "duration": None if duration is None else round(duration * 1e9),  # ns
        }
    )


def _endpoint(record: Record, side: str) -> dict[str, Any]:
    return _drop_none(
        {
            "ip": _text(record.get(f"id.{side}_h")),
            "port": _port(record.get(f"id.{side}_p")),
            "bytes": _count(record.get(f"{side}_ip_bytes")),
            "packets": _count(record.get(f"{side}_pkts")),
        }
    )


def _network(record: Record) -> dict[str, Any]:
    transport = _text(record.get("proto"))
    service = _text(record.get("service"))
    return _drop_none(
        {
            "transport": transport.lower() if transport else None,
            "protocol": service.lower() if service else None,  # Zeek's service, e.g. "dns"
            "bytes": _both(record, "ip_bytes"),
            "packets": _both(record, "pkts"),
        }
    )


def _both(record: Record, suffix: str) -> int | None:
    """orig + resp of a count, when both are known."""
    orig, resp = (_count(record.get(f"{side}_{suffix}")) for side in ("orig", "resp"))
    return None if orig is None or resp is None else orig + resp


def _zeek(record: Record) -> dict[str, Any]:
    connection = _drop_none(
        {"state": _text(record.get("conn_state")), "history": _text(record.get("history"))}
    )
    return _drop_none({"session_id": _text(record.get("uid")), "connection": connection or None})


def _legacy(
    record: Record,
    verdict: Verdict,
    ctx: Context,
    ts: float | None,
    latency_ms: float,
    true_label: str | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": _text(record.get("uid")),
        "ts": ts,  # Zeek's epoch seconds, as a number
        "orig_h": _text(record.get("id.orig_h")),
        "resp_h": _text(record.get("id.resp_h")),
        "label": verdict.label,
        "p": round(verdict.p, 4),
        "latency_ms": round(latency_ms, 3),
        "model_version": ctx.model_version,
    }
    if true_label is not None:
        out["true_label"] = true_label
    return out


def _message(record: Record, verdict: Verdict, threshold: float) -> str:
    proto = _text(record.get("proto")) or "?"
    service = _text(record.get("service"))
    src = _address(record, "orig")
    dst = _address(record, "resp")
    compare = ">=" if verdict.alert else "<"
    return (
        f"{verdict.label} {proto} flow {src} -> {dst}{f' ({service})' if service else ''}: "
        f"P(malicious) {verdict.p_malicious:.3f} {compare} {threshold:g}"
    )


def _address(record: Record, side: str) -> str:
    host = _text(record.get(f"id.{side}_h")) or "?"
    port = _port(record.get(f"id.{side}_p"))
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def _flow_time(ts: float | None) -> dt.datetime | None:
    if ts is None or not 0 <= ts < 2**33:  # a garbled ts must not crash the feed
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _iso(when: dt.datetime) -> str:
    """ECS dates: ISO 8601 in UTC with microseconds and a ``Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text in _UNSET else text


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None or number < 0 else int(number)


def _port(value: Any) -> int | None:
    number = _count(value)
    return number if number is not None and number <= 65535 else None


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
