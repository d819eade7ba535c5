"""The client's metrics file: one JSON object per line, appended and flushed as it happens.

Rules: every record has ``event`` (a stable name, listed in docs/client.md), ``ts`` (UTC ISO-8601
wall clock), ``t`` (seconds since the daemon started, monotonic), ``client`` (configured name or
certificate id) and ``model_version`` (the global version the local model is based on). The file
is appended to, so a restarted client continues the same file; the experiment runner reads it
after the run. Whole-line writes, torn-tail handling and plain-JSON values are
`fedllm_core.jsonlines`'s rules.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedllm_core.jsonlines import JsonLinesFile
from fedllm_core.jsonlines import read_json_lines as read_metrics

__all__ = ["MetricsLog", "read_metrics"]


class MetricsLog:
    """Append-only JSON-lines writer; a no-op when ``path`` is None."""

    def __init__(self, path: Path | None, client: str = "") -> None:
        self.path = path
        self.client = client
        self.model_version = -1
        self._t0 = time.monotonic()
        self._file = JsonLinesFile(path) if path is not None else None

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        self._file.append(
            {
                "event": event,
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "t": round(time.monotonic() - self._t0, 4),
                "client": self.client,
                "model_version": self.model_version,
                **fields,
            }
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
