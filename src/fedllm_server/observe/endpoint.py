"""Start the server's `[metrics]` endpoint: /metrics, /status and the dashboard page at /."""

from __future__ import annotations

from fedllm_core.observe_http import Endpoint, Routes, start_endpoint
from fedllm_server.observe.dashboard import PAGE
from fedllm_server.observe.metrics import ServerObserver
from fedllm_server.state import ServerState


async def attach(state: ServerState) -> Endpoint | None:
    """Listen when `[metrics] enabled` (None otherwise); from now on every metrics record
    also moves the Prometheus counters. Raises OSError when the port cannot be bound."""
    settings = state.settings.metrics
    if not settings.enabled:
        return None
    observer = ServerObserver(state)
    routes = Routes(observer.registry, observer.status, lambda: PAGE)
    endpoint = await start_endpoint(settings, routes)
    state.metrics.listeners.append(observer.on_record)
    return endpoint
