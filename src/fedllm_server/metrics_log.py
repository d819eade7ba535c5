"""The metrics file: one JSON object per line, appended, schema in docs/server.md.

Record kinds (field `kind`): `start` (one per process start), `update` (every accepted or
rejected upload), `round` (every closed synchronous round, aggregated or abandoned) and
`aggregation` (every new global version, with its central evaluation when one ran).
Rules: each record is one `write` of a whole line followed by a flush, so a reader tailing the
file sees whole records; after a crash the last line may be torn, so on open a missing final
newline is added and readers skip lines that do not parse. Every record carries `time`
(unix seconds, wall clock, for plots) and `schema` (bumped on incompatible changes).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any

SCHEMA = 1


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than emit invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Appends records to the metrics file; cheap enough to call on the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = path.open("a+", encoding="utf-8")
        self._terminate_torn_line()

    def _terminate_torn_line(self) -> None:
        self._fh.seek(0, 2)
        size = self._fh.tell()
        if size == 0:
            return
        with self.path.open("rb") as raw:
            raw.seek(size - 1)
            if raw.read(1) != b"\n":
                self._fh.write("\n")
                self._fh.flush()

    def write(self, kind: str, **fields: Any) -> None:
        record = {"schema": SCHEMA, "kind": kind, "time": time.time(), **fields}
        self._fh.write(json.dumps(_clean(record), separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every whole record of a metrics file (a torn line after a crash is skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
