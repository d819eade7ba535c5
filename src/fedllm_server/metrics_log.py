"""The server's metrics file: one JSON object per line, appended; kinds listed in docs/server.md.

Record kinds (field `kind`): `start` (one per process start), `update` (every accepted or
rejected upload), `round` (every closed synchronous round, aggregated or abandoned),
`aggregation` (every new global version, with its central evaluation when one ran), `teacher`
(`[distill]`: one per start, the cloud teacher and its test figures) and `stop`.
Every record is the shared shape of `fedllm_core.metrics_record` (docs/events.md: `schema`,
`daemon = "server"`, `kind`, `ts`, `time`, `t`, then the kind's fields); `read_metrics` also
reads files written before it (schema 1).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from fedllm_core.metrics_record import SCHEMA, MetricsFile, read_metrics
from fedllm_server.durable.private import make_private

__all__ = ["SCHEMA", "MetricsLog", "read_metrics"]
log = structlog.get_logger("fedllm.server")


class MetricsLog:
    """Appends records to the metrics file; cheap enough to call on the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        make_private(path)  # 0600 whatever the umask (it names clients and their metrics)
        self._file = MetricsFile(path, "server")
        # the live endpoint's counters read the same records (fedllm_server.observe)
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def write(self, kind: str, **fields: Any) -> None:
        self._file.write(kind, fields)
        for listener in self.listeners:
            try:
                listener(kind, fields)
            except Exception:  # a live view must never stop the reporter or a connection
                log.exception("metrics_listener_failed", kind=kind)

    def close(self) -> None:
        self._file.close()
