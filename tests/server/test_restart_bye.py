"""The server's Bye says why it ends the conversation, so a client knows whether to come back:
`restarting` when told to stop (what SIGTERM/SIGINT call), `finished` at stop_after_versions,
`revoked` for a connected client whose certificate a SIGHUP reload put on the deny-list."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fedserver_testkit import ScriptedClient, bye_code, tiny_settings_dict

from fedllm_core.certs import PkiPaths, make_federation_pki, revoke
from fedllm_proto.messages import ByeCode
from fedllm_proto.tls import client_context
from fedllm_server.daemon import Running, start
from fedllm_server.evaluation import CentralModel
from fedllm_server.settings import ServerSettings

GSFS = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 1}


async def _started(tmp_path: Path, pki: PkiPaths, **extra: Any) -> Running:
    cfg = tiny_settings_dict(tmp_path / "state", pki, GSFS, **extra)
    settings = ServerSettings.model_validate(cfg)
    return await start(settings, CentralModel(settings), install_signals=False)


async def _joined(running: Running, pki: PkiPaths, name: str) -> ScriptedClient:
    paths = pki.clients[name]
    ctx = client_context(pki.ca_cert, paths.cert, paths.key)
    client = ScriptedClient(name, "127.0.0.1", running.port, ctx, running.state.fingerprint)
    await client.connect()
    return client


async def _ending(client: ScriptedClient, running: Running) -> tuple[ByeCode | None, int]:
    """The client's Bye code and the server's exit code (the Bye goes out while it stops)."""
    code, exit_code = await asyncio.gather(bye_code(client), asyncio.wait_for(running.wait(), 60))
    return code, exit_code


def test_a_server_told_to_stop_says_restarting(tmp_path: Path, pki: Any) -> None:
    async def main() -> tuple[ByeCode | None, int]:
        running = await _started(tmp_path, pki.federation)
        client = await _joined(running, pki.federation, "client-1")
        running.state.request_stop("sigterm")  # what the SIGTERM handler calls
        return await _ending(client, running)

    assert asyncio.run(main()) == (ByeCode.RESTARTING, 0)


def test_the_last_version_ends_with_finished(tmp_path: Path, pki: Any) -> None:
    async def main() -> tuple[ByeCode | None, int]:
        running = await _started(tmp_path, pki.federation, stop_after_versions=1)
        client = await _joined(running, pki.federation, "client-1")
        serving = asyncio.create_task(client.serve())  # takes the global model in
        async with asyncio.timeout(60):
            while client.version < 0:
                await asyncio.sleep(0.01)
        serving.cancel()
        await client.upload()  # a quorum of one: version 1, the last one
        return await _ending(client, running)

    assert asyncio.run(main()) == (ByeCode.FINISHED, 0)


def test_sighup_reload_sends_revoked_to_a_connected_client_it_revokes(tmp_path: Path) -> None:
    pki = make_federation_pki(tmp_path / "pki", clients=("client-1", "client-2"))

    async def main() -> tuple[ByeCode | None, set[str]]:
        running = await _started(tmp_path, pki)
        revoked = await _joined(running, pki, "client-1")
        await _joined(running, pki, "client-2")
        revoke(pki.dir, "client-1")
        running.reload_revocations()  # what the SIGHUP handler calls
        code = await bye_code(revoked)
        async with asyncio.timeout(30):
            while "client-1" in running.state.sessions:
                await asyncio.sleep(0.01)
        left = set(running.state.sessions)
        running.state.request_stop("test done")
        await asyncio.wait_for(running.wait(), 60)
        return code, left

    assert asyncio.run(main()) == (ByeCode.REVOKED, {"client-2"})
