"""The server's systemd STATUS= line: "version N, K clients, acc X", kept current by records.

A `MetricsLog` listener, attached whether or not `[metrics]` is enabled: each record (a start,
an upload, a closed round, an aggregation with its evaluation) refreshes the line, so
`systemctl status fedllm-server` shows where the federation is without any endpoint.
"""

from __future__ import annotations

from typing import Any

from fedllm_core.systemd import StatusLine
from fedllm_server.state import ServerState


class ServerStatusLine:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.accuracy: float | None = None
        self._line = StatusLine()

    def on_record(self, kind: str, fields: dict[str, Any]) -> None:
        evaluation = fields.get("evaluation") if kind == "aggregation" else None
        if evaluation and "accuracy" in evaluation:
            self.accuracy = float(evaluation["accuracy"])
        if kind != "stop":
            self._line.set(self.text())

    def text(self) -> str:
        acc = "not evaluated" if self.accuracy is None else f"{self.accuracy:.4f}"
        clients = len(self.state.sessions)
        return f"version {self.state.engine.version}, {clients} clients, acc {acc}"
