"""The server's `[metrics]` endpoint, scraped over real HTTP while a real daemon federates.

An in-process daemon on loopback with two scripted clients runs FedAvg rounds; /metrics is
parsed with prometheus_client's own parser and /status read as JSON, and the figures that
must move (uploads, aggregations, bytes, central accuracy) are checked against the rounds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fedserver_testkit import ScriptedClient, tiny_settings_dict
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from fedllm_core.observe_http import MetricsEndpointSettings
from fedllm_core.status_cli import summary
from fedllm_server.daemon import start
from fedllm_server.evaluation import CentralModel
from fedllm_server.observe.metrics import ServerObserver
from fedllm_server.settings import ServerSettings

CLIENTS = ("client-1", "client-2")
TOKEN = "a-test-token-of-some-length"


def _get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _scrape_after_rounds(tmp_path: Path, metrics: dict[str, Any], versions: int) -> Any:
    cfg = tiny_settings_dict(
        tmp_path / "state",
        None,
        {"name": "fedavg"},
        rounds={"min_clients": 2, "local_steps": 1, "deadline_s": 10.0},
        metrics=metrics,
    )
    settings = ServerSettings.model_validate(cfg)
    running = await start(settings, CentralModel(settings), install_signals=False)
    assert running.endpoint is not None
    port = running.endpoint.port
    before = await asyncio.to_thread(_get, port, "/metrics", metrics.get("token"))
    clients = [
        ScriptedClient(name, "127.0.0.1", running.port, None, running.state.fingerprint, seed=i)
        for i, name in enumerate(CLIENTS)
    ]
    for client in clients:
        await client.connect()
    serving = [asyncio.create_task(c.serve()) for c in clients]
    observer = next(
        listener.__self__  # type: ignore[attr-defined]
        for listener in running.state.metrics.listeners
        if isinstance(listener.__self__, ServerObserver)  # type: ignore[attr-defined]
    )
    for _ in range(600):  # bounded: 60 s at most
        if len(observer.evaluations) >= versions:  # evaluated: its record reached the gauges
            break
        await asyncio.sleep(0.1)
    after = await asyncio.to_thread(_get, port, "/metrics", metrics.get("token"))
    status = await asyncio.to_thread(_get, port, "/status", metrics.get("token"))
    anonymous = await asyncio.to_thread(_get, port, "/status")
    running.state.request_stop("test over")
    code = await asyncio.wait_for(running.wait(), 60)
    for task in serving:
        task.cancel()
    await asyncio.gather(*serving, return_exceptions=True)
    return code, before, after, status, anonymous


def _datagrams(sock: socket.socket) -> list[str]:
    received = []
    for _ in range(10_000):  # bounded; the daemon sent far fewer
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    return received


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(exit code, /metrics before, /metrics after, /status, /status without token, STATUS=s)"""
    metrics = {"enabled": True, "port": 0, "token": TOKEN}
    tmp = tmp_path_factory.mktemp("observe")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(tmp / "notify"))  # a real sd_notify socket, as systemd binds it
        notify_socket.setblocking(False)
        os.environ["NOTIFY_SOCKET"] = str(tmp / "notify")
        try:
            result = asyncio.run(_scrape_after_rounds(tmp, metrics, 2))
        finally:
            del os.environ["NOTIFY_SOCKET"]
        statuses = [d for d in _datagrams(notify_socket) if d.startswith("STATUS=")]
    return (*result, statuses)


def test_daemon_stops_cleanly_with_the_endpoint(scraped: Any) -> None:
    assert scraped[0] == 0


def test_uploads_and_aggregations_move_between_scrapes(scraped: Any) -> None:
    _, (s0, before), (s1, after), _, _, _ = scraped
    assert (s0, s1) == (200, 200)
    first, later = _samples(before.decode()), _samples(after.decode())
    assert first[("fedllm_server_connected_clients", ())] == 0
    assert later[("fedllm_server_connected_clients", ())] == 2
    assert later[("fedllm_server_model_version", ())] >= 2
    for client in CLIENTS:
        assert later[("fedllm_server_uploads_total", (("client_id", client),))] >= 2
    assert later[("fedllm_server_aggregations_total", (("trigger", "complete"),))] >= 2
    assert later[("fedllm_server_received_bytes_total", ())] > 0
    assert later[("fedllm_server_sent_bytes_total", ())] > 0
    assert later[("fedllm_server_aggregation_seconds_count", ())] >= 2
    assert later[("fedllm_server_broadcast_seconds_count", ())] >= 2
    assert later[("fedllm_server_broadcast_seconds_sum", ())] > 0
    assert later[("fedllm_server_update_staleness_versions_count", ())] >= 4
    assert 0.0 <= later[("fedllm_server_central_accuracy", ())] <= 1.0
    assert later[("fedllm_server_evaluated_version", ())] >= 2
    assert ("fedllm_server_uploads_total", (("client_id", "client-1"),)) not in first


def test_status_names_version_clients_and_accuracy_per_version(scraped: Any) -> None:
    code, body = scraped[3]
    status = json.loads(body)
    assert code == 200
    assert status["version"] >= 2 and status["strategy"] == "fedavg"
    assert [c["client_id"] for c in status["clients"]] == list(CLIENTS)
    assert all(c["connected"] and c["accepted"] >= 2 for c in status["clients"])
    assert [e["version"] for e in status["accuracy"]][:2] == [1, 2]
    assert status["uploads"] >= 4 and status["bytes_out"] > 0


def test_a_request_without_the_token_is_refused(scraped: Any) -> None:
    assert scraped[4][0] == 401


def test_a_public_bind_needs_a_token() -> None:
    with pytest.raises(ValidationError, match="token"):
        MetricsEndpointSettings(enabled=True, bind="0.0.0.0")
    assert MetricsEndpointSettings(enabled=True, bind="0.0.0.0", token=TOKEN).token == TOKEN
    assert MetricsEndpointSettings(enabled=True, bind="::1").bind == "::1"


def test_the_endpoint_is_off_by_default() -> None:
    assert not MetricsEndpointSettings().enabled


def test_fedllm_status_summary_lists_each_client_and_the_accuracy(scraped: Any) -> None:
    text = summary(json.loads(scraped[3][1]))
    rows = [line.split() for line in text.splitlines()]
    assert [r[:2] for r in rows if r and r[0] in CLIENTS] == [[c, "connected"] for c in CLIENTS]
    assert any(r[:1] == ["2"] and len(r) == 3 for r in rows)  # version 2's accuracy row


def test_systemd_status_tells_version_clients_and_accuracy(scraped: Any) -> None:
    statuses = scraped[5]
    assert statuses[0] == "STATUS=version 0, 0 clients, acc not evaluated"
    # the version may have moved on by the time version 2's evaluation is recorded
    line = re.compile(r"STATUS=version ([2-9]|\d\d+), 2 clients, acc [01]\.\d{4}$")
    evaluated = [s for s in statuses if line.match(s)]
    assert evaluated, statuses
    assert all(a != b for a, b in itertools.pairwise(statuses))  # only changes are sent
