"""The server's connection caps and its count of refused peers.

Caps: `max_connections` (default: the soft RLIMIT_NOFILE less a headroom that keeps fds free
for checkpoints, the pool log, the metrics file and endpoint, model files) and
`max_connections_per_address` (default: an eighth of that, so one address cannot hold the
whole door). Refusals (caps, TLS) are counted by reason: each moves the Prometheus counter
(the metrics-log listeners hear a `connection_refused` record, not written to the file: a
flood of refusals must not fill the disk), and a `connections_refused` log event with the
counts so far (and `suppressed`: refusals since the last event) goes out at most every
`LOG_EVERY_S` seconds (`LogThrottle`, fedllm_proto.admission).
"""

from __future__ import annotations

import resource
import time

import structlog

from fedllm_proto.admission import LOG_EVERY_S, Admission, LogThrottle
from fedllm_server.metrics_log import MetricsLog
from fedllm_server.settings import ServerSettings

log = structlog.get_logger("fedllm.server")
MIN_HEADROOM_FDS = 64  # the server's own files, threads' pipes, the metrics endpoint


def derived_caps(soft_nofile: int) -> tuple[int, int]:
    """(global, per address) defaults for a process allowed ``soft_nofile`` descriptors."""
    headroom = max(MIN_HEADROOM_FDS, soft_nofile // 8)
    total = max(8, soft_nofile - headroom)
    return total, max(4, total // 8)


def admission(settings: ServerSettings) -> Admission:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    total, per_address = derived_caps(soft if soft != resource.RLIM_INFINITY else 1 << 20)
    total = settings.max_connections or total
    per_address = min(total, settings.max_connections_per_address or per_address)
    log.info("connection_caps", max_connections=total, max_per_address=per_address, nofile=soft)
    return Admission(total, per_address)


def notify_refused(metrics: MetricsLog, reason: str, address: str) -> None:
    """Tell the metrics listeners (the Prometheus counter) of one refused peer."""
    for listener in metrics.listeners:
        listener("connection_refused", {"reason": reason, "address": address})


class Refusals:
    """``on_refused`` for the transport: count, tell the metrics listeners, log rate-limited."""

    def __init__(self, metrics: MetricsLog) -> None:
        self.metrics = metrics
        self.counts: dict[str, int] = {}
        self._throttle = LogThrottle(LOG_EVERY_S)

    def __call__(self, reason: str, address: str, now: float | None = None) -> None:
        """One refused peer; ``now`` (monotonic seconds) defaults to the clock."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        notify_refused(self.metrics, reason, address)
        if self._throttle.allow(time.monotonic() if now is None else now):
            log.warning(
                "connections_refused",
                reason=reason,
                address=address,
                totals=dict(self.counts),
                suppressed=self._throttle.suppressed,
            )
