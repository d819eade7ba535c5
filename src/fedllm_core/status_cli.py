"""``fedllm status``: ask the running server's `[metrics]` endpoint (GET /status) how it is.

Prints a readable summary (version, strategy, clients with last-seen and version, accuracy
per version, uploads, rejects) or, with ``--json``, the document as the server sent it.
Exits 69 (unavailable) when nothing answers, so scripts can tell "down" from "unhealthy".
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from fedllm_core.errors import ExitCode, FedllmError

TOKEN_ENV = "FEDLLM_METRICS_TOKEN"  # a token on the command line would show in `ps`


class ServerUnavailable(FedllmError):
    exit_code = ExitCode.UNAVAILABLE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Show the running server's state from its [metrics] endpoint (enable it first)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="endpoint host (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=9464, help="endpoint port, [metrics] port (default %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the /status JSON as is")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait (default %(default)s)"
    )


def fetch_status(host: str, port: int, timeout_s: float, token: str | None) -> dict[str, Any]:
    url = f"http://{host}:{port}/status"
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            document: dict[str, Any] = json.loads(response.read())
            return document
    except urllib.error.HTTPError as exc:
        hint = f" (set {TOKEN_ENV})" if exc.code == 401 else ""
        raise ServerUnavailable(f"{url} answered {exc.code}{hint}") from exc
    except (OSError, ValueError) as exc:
        raise ServerUnavailable(
            f"no server status at {url}: {exc} (is the server running with [metrics] enabled?)"
        ) from exc


def run(args: argparse.Namespace) -> int:
    status = fetch_status(args.host, args.port, args.timeout, os.environ.get(TOKEN_ENV))
    print(json.dumps(status, indent=2) if args.json else summary(status))
    return int(ExitCode.OK)


def _ago(now: float, then: float | None) -> str:
    if not then:
        return "never"
    seconds = max(0.0, now - then)
    return "now" if seconds < 1 else f"{seconds:.0f}s ago"


def summary(status: dict[str, Any]) -> str:
    """The /status document as a few aligned lines for a terminal."""
    now = float(status.get("time") or time.time())
    accuracy = status.get("accuracy") or []
    last = accuracy[-1] if accuracy else None
    acc = f"{last['accuracy']:.4f} (version {last['version']})" if last else "not evaluated yet"
    lines = [
        f"server: version {status['version']}, strategy {status['strategy']}"
        + (", stopping" if status.get("stopping") else ""),
        f"up: {_ago(now, status.get('started')).removesuffix(' ago')}",
        f"clients: {status['connected_clients']} connected, {len(status['clients'])} seen",
        f"accuracy: {acc}",
        f"uploads: {status['uploads']} accepted; rejects: "
        + (", ".join(f"{k} {v}" for k, v in sorted(status["rejects"].items())) or "none"),
        f"bytes: {status['bytes_in']} in, {status['bytes_out']} out",
    ]
    if status["clients"]:
        lines.append("")
        lines.append(f"{'client':<24} {'state':<12} {'last seen':<10} {'version':>7} {'up':>5}")
        for c in status["clients"]:
            state = "connected" if c["connected"] else "gone"
            version = "-" if c["base_version"] is None else str(c["base_version"])
            lines.append(
                f"{c['client_id']:<24} {state:<12} {_ago(now, c['last_seen']):<10} "
                f"{version:>7} {c['accepted']:>5}"
            )
    if accuracy:
        lines.append("")
        lines.append(f"{'version':>7} {'accuracy':>9} {'f1_macro':>9}")
        for e in accuracy[-10:]:
            lines.append(f"{e['version']:>7} {e['accuracy']:>9.4f} {e.get('f1_macro', 0.0):>9.4f}")
    return "\n".join(lines)
