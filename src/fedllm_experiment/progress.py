"""Live progress of a strategy run, read by tailing the server's metrics JSON-lines file.

The file is written by another process while we read it, so the tailer keeps a byte offset and
only consumes complete lines (a half-written last line waits for the next poll). The progress
line is printed only when something changed, to keep a 15-minute run's output readable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


@dataclass
class JsonLinesTail:
    """Incremental reader of a JSON-lines file that may not exist yet or may still grow."""

    path: Path
    offset: int = 0

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [rec for rec in map(self._parse, complete.splitlines()) if rec is not None]

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any] | None:
        """A record, or None for a blank or torn line (a daemon killed mid-write)."""
        try:
            record = json.loads(line)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a finished metrics file."""
    return JsonLinesTail(path).read_new()


@dataclass
class Progress:
    """Folds server metrics records into the numbers shown on the progress line."""

    strategy: str
    target_versions: int
    num_clients: int
    out: TextIO = field(default=sys.stdout)
    version: int = 0
    uploads: int = 0
    clients_seen: set[str] = field(default_factory=set)
    accuracy: float | None = None
    _last_line: str = ""

    def feed(self, records: list[dict[str, Any]], elapsed_s: float) -> None:
        for record in records:
            self._fold(record)
        if records:
            self.show(elapsed_s)

    def _fold(self, record: dict[str, Any]) -> None:
        """Server metrics kinds (docs/server.md): update, aggregation; others are ignored."""
        kind = record.get("kind")
        if kind == "update":
            self.uploads += 1
            self.clients_seen.add(str(record.get("client_id")))
        elif kind == "aggregation":
            self.version = int(record.get("version", self.version))
            evaluation = record.get("evaluation")
            if isinstance(evaluation, dict) and "accuracy" in evaluation:
                self.accuracy = float(evaluation["accuracy"])

    def show(self, elapsed_s: float) -> None:
        acc = "-" if self.accuracy is None else f"{self.accuracy:.4f}"
        line = (
            f"  [{self.strategy}] version {self.version}/{self.target_versions}"
            f"  clients reporting {len(self.clients_seen)}/{self.num_clients}"
            f"  uploads {self.uploads}  central acc {acc}"
        )
        if line != self._last_line:
            self._last_line = line
            print(f"{line}  ({elapsed_s:.0f} s)", file=self.out, flush=True)
