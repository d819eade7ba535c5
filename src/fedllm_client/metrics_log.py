"""The client's metrics file: one JSON object per line, appended and flushed as it happens.

Rules: every record is the shared shape of `fedllm_core.metrics_record` (docs/events.md:
``schema``, ``daemon = "client"``, ``kind``, ``ts``, ``time``, ``t``), then ``client``
(configured name or certificate id) and ``model_version`` (the global version the local model
is based on), then the kind's fields (kinds listed in docs/client.md). The file is appended to,
so a restarted client continues the same file; the experiment runner reads it after the run
with ``read_metrics``, which also reads files written before the shared shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from fedllm_core.metrics_record import MetricsFile, read_metrics

__all__ = ["MetricsLog", "read_metrics"]
log = structlog.get_logger("fedllm.client")


class MetricsLog:
    """Append-only JSON-lines writer; a no-op when ``path`` is None."""

    def __init__(self, path: Path | None, client: str = "") -> None:
        self.path = path
        self.client = client
        self.model_version = -1
        self._file = MetricsFile(path, "client") if path is not None else None
        # the `[metrics]` endpoint's counters read the same records (fedllm_client.observe)
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def write(self, kind: str, **fields: Any) -> None:
        for listener in self.listeners:
            try:
                listener(kind, fields)
            except Exception:  # a live view must never stop training or the link
                log.exception("metrics_listener_failed", kind=kind)
        if self._file is None:
            return
        context = {"client": self.client, "model_version": self.model_version}
        self._file.write(kind, {**context, **fields})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
