"""The client's metrics file: one JSON object per line, appended and flushed as it happens.

Rules: every record has ``event`` (a stable name, listed in docs/client.md), ``ts`` (UTC ISO-8601
wall clock), ``t`` (seconds since the daemon started, monotonic), ``client`` (configured name or
certificate id) and ``model_version`` (the global version the local model is based on). Values
are plain JSON (numpy scalars converted). The file is opened in append mode so a restarted
client continues the same file; the experiment runner reads it after the run.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np


def plain_json(value: Any) -> Any:
    """``value`` with numpy scalars, paths and non-finite floats made plain JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value is honest
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class MetricsLog:
    """Append-only JSON-lines writer; a no-op when ``path`` is None."""

    def __init__(self, path: Path | None, client: str = "") -> None:
        self.path = path
        self.client = client
        self.model_version = -1
        self._t0 = time.monotonic()
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {
            "event": event,
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "t": round(time.monotonic() - self._t0, 4),
            "client": self.client,
            "model_version": self.model_version,
            **plain_json(fields),
        }
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics file (a torn last line from a kill is skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
