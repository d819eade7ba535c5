"""The daemons' local observation endpoint: `[metrics]` settings and a tiny asyncio HTTP server.

Serves GET /metrics (Prometheus text from the daemon's own registry) and, where the daemon
gives them, GET /status (JSON) and GET / (the dashboard page). Read-only, GET only, one
request per connection. Off by default; bound to loopback unless a token is configured
(then every request needs ``Authorization: Bearer <token>``), so a metrics port never
exposes the federation to the network by accident. Runs on the daemon's own event loop:
the handlers only read loop-side state, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import Field, model_validator

from fedllm_core.settings import FrozenSettings

log = structlog.get_logger("fedllm.observe")
READ_TIMEOUT_S = 5.0  # a client that sends no request line in this long is dropped
MAX_HEADER_BYTES = 16 * 1024


class MetricsEndpointSettings(FrozenSettings):
    """`[metrics]`: the local HTTP endpoint (docs/metrics.md)."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535, description="0 = any free port (tests)")
    # Required for a non-loopback bind: requests then need `Authorization: Bearer <token>`.
    token: str | None = Field(default=None, min_length=16)

    @model_validator(mode="after")
    def _loopback_or_token(self) -> MetricsEndpointSettings:
        if self.enabled and self.token is None and not is_loopback(self.bind):
            raise ValueError("metrics.bind off loopback needs metrics.token")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: may resolve anywhere


@dataclass
class Routes:
    """What one daemon serves: its registry, and optional /status and / handlers."""

    registry: CollectorRegistry
    status: Callable[[], dict[str, Any]] | None = None
    page: Callable[[], str] | None = None


class Endpoint:
    """A started endpoint; `close()` stops listening."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()


async def start_endpoint(settings: MetricsEndpointSettings, routes: Routes) -> Endpoint | None:
    """Listen when `[metrics] enabled`; None otherwise. Raises OSError when the port is taken."""
    if not settings.enabled:
        return None

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await _answer(reader, settings.token, routes)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n"
        )
        if status == 401:
            head += 'WWW-Authenticate: Bearer realm="fedllm"\r\n'
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + b"\r\n" + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    server = await asyncio.start_server(on_connection, settings.bind, settings.port)
    endpoint = Endpoint(server)
    log.info("metrics_endpoint_listening", host=settings.bind, port=endpoint.port)
    return endpoint


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method"}


async def _answer(
    reader: asyncio.StreamReader, token: str | None, routes: Routes
) -> tuple[int, str, bytes]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError("headers too long")
    request_line, *header_lines = raw.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines if line)
    }
    if token is not None:
        given = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return 401, "text/plain", b"token required\n"
    if method != "GET":
        return 405, "text/plain", b"GET only\n"
    path = target.split("?", 1)[0]
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(routes.registry)
    if path == "/status" and routes.status is not None:
        return 200, "application/json", json.dumps(routes.status(), default=str).encode()
    if path == "/" and routes.page is not None:
        return 200, "text/html; charset=utf-8", routes.page().encode()
    return 404, "text/plain", b"not found\n"
