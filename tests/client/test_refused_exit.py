"""The real ``fedllm-client`` process ends on a refusal instead of retrying forever.

Over real TLS 1.3 on loopback: the server is the real transport (``serve``, with the fixture's
deny-list, as the server daemon runs it), the client the real console script in its own
process, on a tiny random model. A revoked certificate must end the client with exit 78 and one
``client_refused`` JSON event (``why = "unauthorized"``); a server whose certificate does not
match ``server.server_name`` with exit 77 (``why = "server_certificate_rejected"``). Backoff is
set to retry forever, so only the refusal can end the process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fedllm_proto.transport import Peer, serve

from .conftest import tiny_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SAFETY_S = 240.0  # a net against a client that never ends, never a timing assertion


async def _ignore(peer: Peer) -> None:
    await peer.recv()


def _config(pki: Any, tmp: Path, port: int, name: str, server_name: str) -> Path:
    paths = pki.federation.clients[name]
    settings = tiny_settings(
        tmp / "state",
        insecure=False,
        client_name=name,
        server={"port": port, "server_name": server_name},
        tls={"ca": pki.federation.ca_cert, "cert": paths.cert, "key": paths.key},
        backoff={"max_attempts": 0, "initial_s": 0.1, "max_s": 0.5},
    )
    path = tmp / "client.toml"
    path.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    return path


async def _client_against_server(config: Path, server: Any) -> tuple[int, list[dict[str, Any]]]:
    argv = [sys.executable, "-m", "fedllm_client.cli", "--config", str(config)]
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(SAFETY_S):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
    return int(proc.returncode or 0), _json_lines(err.decode())


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _run(pki: Any, tmp: Path, name: str, server_name: str) -> tuple[int, list[dict[str, Any]]]:
    async def main() -> tuple[int, list[dict[str, Any]]]:
        server = await serve(_ignore, ssl_context=pki.server_context(), revocation=pki.revocation())
        port = server.sockets[0].getsockname()[1]
        return await _client_against_server(_config(pki, tmp, port, name, server_name), server)

    return asyncio.run(main())


def _refused(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["why"], e["exit_code"]) for e in events if e["event"] == "client_refused"]


def test_a_revoked_client_exits_78_with_one_refusal_event(pki: Any, tmp_path: Path) -> None:
    code, events = _run(pki, tmp_path, pki.revoked_client, "localhost")
    assert (code, _refused(events)) == (78, [("unauthorized", 78)])


def test_a_server_host_name_mismatch_exits_77_with_one_refusal_event(
    pki: Any, tmp_path: Path
) -> None:
    code, events = _run(pki, tmp_path, pki.clients[0], "fl.example.org")
    assert (code, _refused(events)) == (77, [("server_certificate_rejected", 77)])
