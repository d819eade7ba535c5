"""Issue 10, attack 1, the global cap: more silent TCP peers than `max_connections` in all.

The daemon runs as a child process with `max_connections = 8` and the same per-address cap, so
the global one is what binds. An honest GSFS client (K = 1) joins first; an attacker on
127.0.0.2 then opens 20 silent sockets (no Hello) and holds them: 7 fill the door, the other 13
are closed at once as `too_many_connections`. Meanwhile the honest client keeps uploading and
gets every new version, a second honest client from another address is refused by the same
global cap, and once the attacker leaves it joins. SIGTERM still gives exit 0. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path
from typing import Any

from fedserver_testkit import (
    ATTACKER,
    ScriptedClient,
    ServerProcess,
    closed_by_server,
    silent_connections,
    tiny_settings_dict,
    to_toml,
)

from fedllm_proto.admission import TOO_MANY_CONNECTIONS
from fedllm_proto.transport import PeerClosed

CAP = 8
SILENT = 20
SOLO = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 1}


def _server(tmp_path: Path) -> ServerProcess:
    cfg = tiny_settings_dict(
        tmp_path / "state",
        None,
        SOLO,
        handshake_timeout_s=120.0,  # the silent sockets are held for the whole test
        max_connections=CAP,
        max_connections_per_address=CAP,
    )
    config = tmp_path / "server.toml"
    config.write_text(to_toml(cfg))
    return ServerProcess(config)


def _closed_count(socks: list[socket.socket]) -> int:
    return sum(closed_by_server(s) for s in socks[CAP - 1 :])  # the held ones would time out


async def _joins(port: int, fingerprint: str) -> bool:
    """Whether a fresh client (127.0.0.1) gets a Welcome now."""
    client = ScriptedClient("late", "127.0.0.1", port, None, fingerprint, seed=9)
    try:
        async with asyncio.timeout(10):
            await client.connect()
    except (PeerClosed, ConnectionError, TimeoutError, AssertionError):
        return False
    with contextlib.suppress(PeerClosed, ConnectionError):
        await client.close()
    return client.welcome is not None


async def _scenario(server: ServerProcess, fingerprint: str) -> dict[str, Any]:
    port = server.port
    honest = ScriptedClient("honest", "127.0.0.1", port, None, fingerprint, seed=1)
    seen: dict[str, Any] = {}
    async with asyncio.timeout(120):
        await honest.connect()
        serving = asyncio.create_task(honest.serve())
        await honest.upload_per_version(1)
        socks = await asyncio.to_thread(silent_connections, port, SILENT)
        try:
            seen["closed"] = await asyncio.to_thread(_closed_count, socks)
            await honest.upload_per_version(3)  # the door is full: served all the same
            seen["late_while_full"] = await _joins(port, fingerprint)
        finally:
            for sock in socks:
                sock.close()
        for _ in range(200):  # bounded: the sockets are released as the server sees them close
            if await _joins(port, fingerprint):
                seen["late_after"] = True
                break
            await asyncio.sleep(0.05)
        seen["version"] = honest.version
        await honest.close()
        await asyncio.wait({serving}, timeout=10)
    return seen


def test_silent_peers_past_the_global_cap_leave_the_honest_client_served(
    tmp_path: Path,
) -> None:
    server = _server(tmp_path)
    caps = server.wait_event("connection_caps")
    assert (caps["max_connections"], caps["max_per_address"]) == (CAP, CAP)
    seen = asyncio.run(_scenario(server, server.fingerprint))
    refused = server.wait_event("connections_refused", reason=TOO_MANY_CONNECTIONS)
    code = server.stop(signal.SIGTERM)
    # 7 sockets fill the door beside the honest one; the other 13 are closed at the accept
    assert (seen["closed"], refused["address"].split(":")[0]) == (SILENT - (CAP - 1), ATTACKER)
    assert (seen["version"], seen["late_while_full"], seen.get("late_after")) == (3, False, True)
    assert code == 0
