"""The client's `[metrics]` endpoint: Prometheus /metrics (no /status, no page on a client).

Counters of events (uploads by trigger, global versions received, connections) are fed by the
client's metrics records through a `MetricsLog` listener, so the file and the endpoint agree;
the persisted totals (steps used, bytes up/down, the local model's version) are read from the
learner's state at scrape time and survive a restart like the state does. Records come from the
worker thread as well as the loop: prometheus_client's metrics are thread-safe. Names:
docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedllm_client.learner import Learner
from fedllm_core.errors import ExitCode, FedllmError
from fedllm_core.observe_http import Endpoint, Routes, start_endpoint


class MetricsBindError(FedllmError):
    exit_code = ExitCode.OS


class _StateCollector(Collector):
    """Totals the client persists, read at scrape time."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    def collect(self) -> Iterator[Metric]:
        s, budget = self.learner.state, self.learner.settings.max_total_steps
        yield CounterMetricFamily(
            "fedllm_client_training_steps", "local optimizer steps used", value=s.steps_used
        )
        yield GaugeMetricFamily("fedllm_client_step_budget", "max_total_steps", value=budget)
        yield GaugeMetricFamily(
            "fedllm_client_model_version",
            "global version the local model is based on",
            value=s.base_version,
        )
        yield CounterMetricFamily("fedllm_client_sent_bytes", "update bytes sent", value=s.bytes_up)
        yield CounterMetricFamily(
            "fedllm_client_received_bytes", "bytes received from the server", value=s.bytes_down
        )


class ClientObserver:
    def __init__(self, learner: Learner) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        r.register(_StateCollector(learner))
        self.uploads = Counter(
            "fedllm_client_uploads", "updates sent, by trigger", ["trigger"], registry=r
        )
        self.versions = Counter(
            "fedllm_client_global_versions_received", "global models received", registry=r
        )
        self.connections = Counter(
            "fedllm_client_connections", "welcomes from the server", registry=r
        )
        self.loss = Gauge(
            "fedllm_client_training_loss", "mean training loss of the last step window", registry=r
        )
        self.rejects = Counter(
            "fedllm_client_upload_rejects", "updates the server rejected", ["reason"], registry=r
        )
        self.suppressed = Counter(
            "fedllm_client_trigger_suppressed", "trigger checks that did not upload", registry=r
        )

    def on_record(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "step":
            self.loss.set(float(fields.get("loss_avg", fields.get("loss", 0.0))))
        elif kind == "upload":
            self.uploads.labels(str(fields.get("trigger"))).inc()
        elif kind == "broadcast_received":
            self.versions.inc()
        elif kind == "connected":
            self.connections.inc()
        elif kind == "trigger_suppressed":
            self.suppressed.inc()
        elif kind == "reject":
            self.rejects.labels(str(fields.get("code"))).inc()


async def attach(learner: Learner) -> Endpoint | None:
    """Listen when `[metrics] enabled` (None otherwise). Raises OSError when it cannot bind."""
    settings = learner.settings.metrics
    if not settings.enabled:
        return None
    observer = ClientObserver(learner)
    try:
        endpoint = await start_endpoint(settings, Routes(observer.registry))
    except OSError as exc:
        where = f"{settings.bind}:{settings.port}"
        raise MetricsBindError(f"cannot listen for metrics on {where}: {exc}") from exc
    learner.metrics.listeners.append(observer.on_record)
    return endpoint
