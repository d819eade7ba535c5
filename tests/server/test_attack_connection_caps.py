"""Issue 10, attack 1: silent TCP peers past the fd limit must not starve or crash the server.

The daemon runs as a child process whose RLIMIT_NOFILE is lowered to 256; an attacker from
127.0.0.2 opens 300 silent connections (no TLS, no Hello) and holds them. Before the caps, the
accepts and the checkpoint hit EMFILE: honest clients could not join and the server could die.
Now the caps (derived from the limit) close the surplus at once: two honest clients from
127.0.0.1 still join and make the server aggregate, the refusals are counted by reason (the
event, the Prometheus counter), and SIGTERM still gives exit 0. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from fedserver_testkit import (
    ATTACKER,
    ScriptedClient,
    ServerProcess,
    closed_by_server,
    silent_connections,
    tiny_settings_dict,
    to_toml,
)

from fedllm_proto.admission import TOO_MANY_CONNECTIONS, TOO_MANY_FROM_ADDRESS, Admission
from fedllm_proto.transport import PeerClosed
from fedllm_server.door import derived_caps

GSFS = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 3}  # K = 2
SERVER_NOFILE = 256
SILENT = 300


@contextlib.contextmanager
def _soft_nofile(limit: int) -> Iterator[None]:
    """Children started inside inherit ``limit``; this process gets its own back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _honest_federation(port: int, fingerprint: str) -> list[int]:
    clients = [
        ScriptedClient(f"honest-{i}", "127.0.0.1", port, None, fingerprint, seed=i) for i in (1, 2)
    ]
    tasks = []
    async with asyncio.timeout(60):
        for client in clients:
            await client.connect()
            tasks.append(asyncio.create_task(client.serve()))
        await asyncio.gather(*(c.upload_per_version(1, timeout_s=60) for c in clients))
    for client in clients:
        with contextlib.suppress(PeerClosed, ConnectionError):
            await client.close()
    await asyncio.wait(tasks, timeout=10)
    return [c.version for c in clients]


def test_silent_peers_past_the_fd_limit_neither_starve_nor_crash_the_server(
    tmp_path: Path,
) -> None:
    cfg = tiny_settings_dict(
        tmp_path / "state",
        None,
        GSFS,
        handshake_timeout_s=120.0,  # the attacker's sockets stay open for the whole test
        insecure_names_per_address=4,
        metrics={"enabled": True, "port": 0},
    )
    config = tmp_path / "server.toml"
    config.write_text(to_toml(cfg))
    with _soft_nofile(SERVER_NOFILE):
        server = ServerProcess(config)
    port = server.port
    caps = server.wait_event("connection_caps")
    assert (caps["max_connections"], caps["max_per_address"]) == derived_caps(SERVER_NOFILE)
    fingerprint = server.fingerprint
    socks = silent_connections(port, SILENT)
    try:
        # the surplus is closed at once, the first ones are held (awaiting their Hello)
        assert closed_by_server(socks[-1])
        refused = server.wait_event("connections_refused", reason="too_many_from_address")
        assert refused["address"].startswith(ATTACKER)
        metrics_port = server.wait_event("metrics_endpoint_listening")["port"]
        assert _refused_total(metrics_port, "too_many_from_address") >= 1
        versions = asyncio.run(_honest_federation(port, fingerprint))
        assert versions == [1, 1]  # they joined and the server aggregated meanwhile
        assert server.proc.poll() is None
    finally:
        for sock in socks:
            sock.close()
    assert server.stop(signal.SIGTERM) == 0


def _refused_total(port: int, reason: str) -> float:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    name = f'fedllm_server_connections_refused_total{{reason="{reason}"}}'
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return values[0] if values else 0.0


def test_the_caps_leave_headroom_and_bound_each_address() -> None:
    assert derived_caps(256) == (192, 24)
    assert derived_caps(1024) == (896, 112)
    total, per_address = derived_caps(20_000)
    assert total == 20_000 - 2_500 and per_address == total // 8


def test_admission_refuses_past_either_cap_and_frees_on_release() -> None:
    door = Admission(max_connections=3, max_per_address=2)
    assert [door.admit("a"), door.admit("a"), door.admit("a")] == [
        None,
        None,
        TOO_MANY_FROM_ADDRESS,
    ]
    assert door.admit("b") is None
    assert door.admit("c") == TOO_MANY_CONNECTIONS
    door.release("a")
    assert door.admit("c") is None
    for host in ("a", "b", "c"):
        door.release(host)
    assert (door.open_total, door.open_by_host) == (0, {})
