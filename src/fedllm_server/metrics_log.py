"""The metrics file: one JSON object per line, appended, schema in docs/server.md.

Record kinds (field `kind`): `start` (one per process start), `update` (every accepted or
rejected upload), `round` (every closed synchronous round, aggregated or abandoned) and
`aggregation` (every new global version, with its central evaluation when one ran).
Every record carries `time` (unix seconds, wall clock, for plots) and `schema` (bumped on
incompatible changes). Whole-line writes, torn-tail handling and NaN -> null are
`fedllm_core.jsonlines`'s rules.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedllm_core.jsonlines import JsonLinesFile
from fedllm_core.jsonlines import read_json_lines as read_metrics
from fedllm_server.durable.private import make_private

__all__ = ["SCHEMA", "MetricsLog", "read_metrics"]

SCHEMA = 1


class MetricsLog:
    """Appends records to the metrics file; cheap enough to call on the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        make_private(path)  # 0600 whatever the umask (it names clients and their metrics)
        self._file = JsonLinesFile(path)

    def write(self, kind: str, **fields: Any) -> None:
        self._file.append({"schema": SCHEMA, "kind": kind, "time": time.time(), **fields})

    def close(self) -> None:
        self._file.close()
