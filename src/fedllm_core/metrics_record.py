"""The one metrics-record shape both daemons write, and the reader that also takes older files.

Rules: every record starts with the same envelope (docs/events.md, "Metrics records"):
``schema`` (SCHEMA), ``daemon`` ("server" or "client"), ``kind`` (the record's name, listed per
daemon in docs/server.md and docs/client.md), ``ts`` (ISO-8601 UTC, milliseconds), ``time``
(unix seconds, wall clock: arithmetic and plots) and ``t`` (seconds since this process started,
monotonic: durations a clock step cannot bend). Then the daemon's context (the client's
``client`` and ``model_version``), then the kind's own fields; none of them may reuse an
envelope key. Files written before this schema (the client's ``event``/``ts``/``t`` records,
the server's schema 1 ``kind``/``time`` records) are read into this shape by ``read_metrics``.
Whole-line writes and torn tails are `fedllm_core.jsonlines`'s rules.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fedllm_core.jsonlines import JsonLinesFile, read_json_lines

__all__ = ["ENVELOPE", "SCHEMA", "Daemon", "MetricsFile", "make_record", "read_metrics", "upgrade"]

SCHEMA = 2  # 1: the server's kind/time records; the client's event records had none
ENVELOPE = ("schema", "daemon", "kind", "ts", "time", "t")
Daemon = Literal["server", "client"]
Record = dict[str, Any]


def make_record(
    daemon: Daemon, kind: str, wall: float, since_start: float, fields: Mapping[str, Any]
) -> Record:
    """One record: the envelope, then ``fields`` (the daemon's context and the kind's fields)."""
    clash = set(ENVELOPE).intersection(fields)
    if clash:  # a programming error: the envelope means the same thing in every record
        raise ValueError(f"metrics record {kind!r} reuses envelope keys {sorted(clash)}")
    envelope = {
        "schema": SCHEMA,
        "daemon": daemon,
        "kind": kind,
        "ts": _iso(wall),
        "time": wall,
        "t": round(since_start, 4),
    }
    return {**envelope, **fields}


class MetricsFile:
    """Appends records of one daemon to its JSON-lines metrics file."""

    def __init__(self, path: Path, daemon: Daemon) -> None:
        self.path, self.daemon = path, daemon
        self._t0 = time.monotonic()
        self._file = JsonLinesFile(path)

    def write(self, kind: str, fields: Mapping[str, Any]) -> None:
        since_start = time.monotonic() - self._t0
        self._file.append(make_record(self.daemon, kind, time.time(), since_start, fields))

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[Record]:
    """Every whole record of a metrics file, each in this schema's shape (older lines upgraded)."""
    return list(upgrade_all(read_json_lines(path)))


def upgrade_all(records: Iterable[Record]) -> Iterable[Record]:
    """``upgrade`` in file order; an old server line's ``t`` counts from its process's start."""
    started: float | None = None
    for record in records:
        new = upgrade(record, started)
        if new["daemon"] == "server" and new["kind"] == "start":
            started = float(new["time"])
        yield new


def upgrade(record: Record, started: float | None = None) -> Record:
    """``record`` in this schema's shape. ``started``: unix time of the server's last ``start``
    record before it (an old server line has no ``t``; None leaves it unknown, as null)."""
    if record.get("schema") == SCHEMA:
        return record
    if "event" in record and "kind" not in record:  # the client's records before schema 2
        fields = {k: v for k, v in record.items() if k not in ("event", "ts", "t")}
        wall = _unix(record.get("ts"))
        return {
            "schema": SCHEMA,
            "daemon": "client",
            "kind": record["event"],
            "ts": record.get("ts"),
            "time": wall,
            "t": record.get("t"),
            **fields,
        }
    return _upgrade_server(record, started)


def _upgrade_server(record: Record, started: float | None) -> Record:
    """A schema 1 server record (``schema``, ``kind``, ``time``)."""
    fields = {k: v for k, v in record.items() if k not in ("schema", "kind", "time")}
    wall = record.get("time")
    kind = record.get("kind")
    if kind == "start":
        started = wall
    since = None
    if isinstance(wall, int | float) and started is not None:
        since = round(float(wall) - started, 4)
    return {
        "schema": SCHEMA,
        "daemon": "server",
        "kind": kind,
        "ts": _iso(float(wall)) if isinstance(wall, int | float) else None,
        "time": wall,
        "t": since,
        **fields,
    }


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


def _unix(ts: object) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None
