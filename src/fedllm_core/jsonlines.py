"""JSON-lines metrics files shared by the daemons: append whole records, read what is whole.

Rules: each record is one write of a whole line followed by a flush, so a reader tailing the
file sees whole records. After a crash the last line may be torn: on open a missing final
newline is added (the next record starts on its own line) and readers skip lines that do not
parse. JSON has no NaN/inf: they are written as null rather than as invalid JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any

import numpy as np


def plain_json(value: Any) -> Any:
    """``value`` with numpy scalars, paths and non-finite floats made plain JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a missing value is honest; NaN would make the line unparseable
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class JsonLinesFile:
    """An append-only JSON-lines file (a restarted daemon continues the same file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = path.open("a+", encoding="utf-8")
        self._terminate_torn_line()

    def _terminate_torn_line(self) -> None:
        assert self._fh is not None
        size = self._fh.seek(0, 2)
        if size == 0:
            return
        with self.path.open("rb") as raw:
            raw.seek(size - 1)
            if raw.read(1) != b"\n":
                self._fh.write("\n")
                self._fh.flush()

    def append(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(plain_json(record), separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every whole record of a JSON-lines file (a torn line after a crash is skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
