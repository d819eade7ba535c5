"""Prometheus metrics and the /status document, both fed by the server's metrics records.

`ServerObserver.on_record` is a `MetricsLog` listener: every record the metrics file gets
(`start`, `update`, `round`, `aggregation`, `stop`) moves the counters here too, so the file
and the endpoint can never disagree. Gauges that are state, not events (connected clients,
the served version), are read from the `ServerState` at scrape time. One private registry per
server: tests run several daemons in one process. Names: docs/metrics.md.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedllm_server.state import ServerState

HISTORY = 2000  # uploads kept for the dashboard's per-client timeline (bounded memory)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
BYTE_BUCKETS = tuple(float(4**k * 1024) for k in range(12))  # 1 KiB .. 4 GiB
# encoding a model once + offering it to every outbox: ms for a LoRA state, more at scale
BROADCAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32)


@dataclass
class ClientView:
    """What the server has seen of one client since this process started."""

    client_id: str
    last_seen: float = 0.0  # wall clock of its last upload (or of the scrape, when connected)
    base_version: int | None = None  # the version its last upload was trained from
    accepted: int = 0
    rejected: int = 0
    bytes_in: int = 0


class ServerObserver:
    """Owns the registry; reads the state for gauges and /status."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge(
            "fedllm_server_connected_clients", "clients with a live session", registry=r
        ).set_function(lambda: len(state.sessions))
        Gauge(
            "fedllm_server_model_version", "the global model version served", registry=r
        ).set_function(lambda: state.engine.version)
        self.uploads = Counter(
            "fedllm_server_uploads", "updates accepted", ["client_id"], registry=r
        )
        self.rejects = Counter(
            "fedllm_server_upload_rejects", "updates rejected, by reason", ["reason"], registry=r
        )
        self.trigger_fires = Counter(
            "fedllm_server_client_trigger_fires",
            "uploads by the client trigger that fired them",
            ["trigger"],
            registry=r,
        )
        self.aggregations = Counter(
            "fedllm_server_aggregations", "new global versions, by trigger", ["trigger"], registry=r
        )
        self.rounds = Counter(
            "fedllm_server_rounds", "closed synchronous rounds, by reason", ["reason"], registry=r
        )
        self.refused = Counter(
            "fedllm_server_connections_refused",
            "peers refused at the door (connection caps, TLS), by reason",
            ["reason"],
            registry=r,
        )
        self.received = Counter(
            "fedllm_server_received_bytes", "update payload bytes received", registry=r
        )
        self.sent = Counter(
            "fedllm_server_sent_bytes", "global model bytes queued to clients", registry=r
        )
        self.time_to_quorum = Histogram(
            "fedllm_server_time_to_quorum_seconds",
            "wait from the previous version until the aggregation was triggered",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.aggregation_time = Histogram(
            "fedllm_server_aggregation_seconds",
            "aggregation (engine) time per version",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.broadcast_time = Histogram(
            "fedllm_server_broadcast_seconds",
            "time to encode a new version (once per wire encoding) and queue it to every client",
            buckets=BROADCAST_BUCKETS,
            registry=r,
        )
        self.broadcast_bytes = Histogram(
            "fedllm_server_broadcast_bytes",
            "bytes queued per broadcast of a new version",
            buckets=BYTE_BUCKETS,
            registry=r,
        )
        self.broadcast_clients = Histogram(
            "fedllm_server_broadcast_clients",
            "clients a new version was queued to",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.staleness = Histogram(
            "fedllm_server_update_staleness_versions",
            "served version minus the update's base version, accepted updates",
            buckets=STALENESS_BUCKETS,
            registry=r,
        )
        self.accuracy = Gauge(
            "fedllm_server_central_accuracy", "central test accuracy, last evaluation", registry=r
        )
        self.f1 = Gauge(
            "fedllm_server_central_f1_macro", "central test macro F1, last evaluation", registry=r
        )
        self.evaluated_version = Gauge(
            "fedllm_server_evaluated_version", "the version the central gauges are of", registry=r
        )
        self.started = time.time()
        self.strategy = state.settings.strategy.name
        self.clients: dict[str, ClientView] = {}
        self.evaluations: list[dict[str, Any]] = []  # one per evaluated version, in order
        self.uploads_over_time: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.reject_reasons: dict[str, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------ the metrics records

    def on_record(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "update":
            self._update(fields)
        elif kind == "aggregation":
            self._aggregation(fields)
        elif kind == "connection_refused":
            self.refused.labels(str(fields.get("reason"))).inc()
        elif kind == "round":
            self.rounds.labels(str(fields.get("reason"))).inc()

    def _update(self, fields: dict[str, Any]) -> None:
        client_id, size = str(fields["client_id"]), int(fields.get("bytes") or 0)
        view = self.clients.setdefault(client_id, ClientView(client_id))
        view.last_seen, view.base_version = time.time(), fields.get("base_version")
        self.trigger_fires.labels(str(fields.get("trigger"))).inc()
        self.received.inc(size)
        self.bytes_in += size
        if fields.get("outcome") == "accepted":
            view.accepted += 1
            view.bytes_in += size
            self.uploads.labels(client_id).inc()
            served, base = fields.get("global_version"), fields.get("base_version")
            if isinstance(served, int) and isinstance(base, int):
                self.staleness.observe(max(0, served - base))
        else:
            view.rejected += 1
            reason = str(fields.get("code"))
            self.rejects.labels(reason).inc()
            self.reject_reasons[reason] = self.reject_reasons.get(reason, 0) + 1
        self.uploads_over_time.append(
            {"time": view.last_seen, "client_id": client_id, "outcome": fields.get("outcome")}
        )

    def _aggregation(self, fields: dict[str, Any]) -> None:
        self.aggregations.labels(str(fields.get("trigger"))).inc()
        out = int(fields.get("bytes_out") or 0)
        self.sent.inc(out)
        self.bytes_out += out
        self.broadcast_bytes.observe(out)
        self.broadcast_clients.observe(len(fields.get("sent_to") or ()))  # client ids
        self.time_to_quorum.observe(float(fields.get("time_to_quorum_s") or 0.0))
        self.aggregation_time.observe(float(fields.get("aggregation_s") or 0.0))
        self.broadcast_time.observe(float(fields.get("broadcast_s") or 0.0))
        evaluation = fields.get("evaluation")
        if evaluation:
            version = int(fields["version"])
            self.accuracy.set(float(evaluation.get("accuracy", 0.0)))
            self.f1.set(float(evaluation.get("f1_macro", 0.0)))
            self.evaluated_version.set(version)
            self.evaluations.append({"version": version, "time": time.time(), **evaluation})

    # ---------------------------------------------------------------------------- /status

    def status(self) -> dict[str, Any]:
        """The JSON `fedllm status` and the dashboard read (docs/metrics.md)."""
        state, now = self.state, time.time()
        connected = {s.client_id: s for s in state.sessions.values()}
        clients = []
        for client_id in sorted(set(self.clients) | set(connected)):
            view = self.clients.get(client_id, ClientView(client_id))
            session = connected.get(client_id)
            clients.append(
                {
                    "client_id": client_id,
                    "connected": session is not None,
                    "address": session.peer.address if session is not None else None,
                    "last_seen": now if session is not None else view.last_seen or None,
                    "last_upload": view.last_seen or None,
                    "base_version": view.base_version,
                    "accepted": view.accepted,
                    "rejected": view.rejected,
                    "bytes_in": view.bytes_in,
                }
            )
        return {
            "daemon": "server",
            "time": now,
            "started": self.started,
            "version": state.engine.version,
            "strategy": self.strategy,
            "stopping": state.stopping.is_set(),
            "connected_clients": len(connected),
            "clients": clients,
            "accuracy": self.evaluations,
            "uploads": sum(v.accepted for v in self.clients.values()),
            "rejects": dict(self.reject_reasons),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "uploads_over_time": list(self.uploads_over_time),
        }
