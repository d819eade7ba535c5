"""Issue 10, attack 11: a revoked client must lose its open session on SIGHUP, end to end.

A real daemon process with mutual TLS, two connected clients with real certificates;
`fedllm_core.certs.revoke` puts client-1 on the revocation list, the daemon gets a real
SIGHUP: client-1's session ends with Bye `revoked`, its reconnect is refused at the door
(Error UNAUTHORIZED, counted as `tls_unauthorized`), and client-2 goes on to an
aggregation. Exit 0 on SIGTERM. Bounded.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from fedserver_testkit import ScriptedClient, ServerProcess, bye_code, tiny_settings_dict, to_toml

from fedllm_core.certs import PkiPaths, make_federation_pki, revoke
from fedllm_proto.errors import ErrorCode
from fedllm_proto.messages import PROTOCOL_VERSIONS, ByeCode, Error, Hello
from fedllm_proto.tls import client_context
from fedllm_proto.transport import PeerClosed, connect

GSFS = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 1}  # K = 1


def _client(pki: PkiPaths, name: str, port: int, fingerprint: str) -> ScriptedClient:
    paths = pki.clients[name]
    ctx = client_context(pki.ca_cert, paths.cert, paths.key)
    return ScriptedClient(name, "127.0.0.1", port, ctx, fingerprint)


async def _reconnect_answer(pki: PkiPaths, port: int, fingerprint: str) -> object:
    """What a reconnecting client-1 hears: an Error, or how its link ended."""
    paths = pki.clients["client-1"]
    ctx = client_context(pki.ca_cert, paths.cert, paths.key)
    try:
        peer = await connect("127.0.0.1", port, ctx, "localhost")
        await peer.send(Hello(PROTOCOL_VERSIONS, fingerprint, (), 10, -1))
        return await asyncio.wait_for(peer.recv(), 30)
    except PeerClosed as exc:
        return exc
    except (OSError, TimeoutError) as exc:
        return exc


def test_sighup_ends_a_revoked_clients_session_and_refuses_its_return(tmp_path: Path) -> None:
    pki = make_federation_pki(tmp_path / "pki", clients=("client-1", "client-2"))
    config = tmp_path / "server.toml"
    config.write_text(to_toml(tiny_settings_dict(tmp_path / "state", pki, GSFS)))
    server = ServerProcess(config)
    port = server.port
    fingerprint = server.fingerprint

    async def main() -> tuple[ByeCode | None, object, int]:
        revoked = _client(pki, "client-1", port, fingerprint)
        other = _client(pki, "client-2", port, fingerprint)
        await revoked.connect()
        await other.connect()
        serving = asyncio.create_task(other.serve())
        revoke(pki.dir, "client-1")
        server.proc.send_signal(signal.SIGHUP)
        code = await bye_code(revoked)
        answer = await _reconnect_answer(pki, port, fingerprint)
        await other.upload_per_version(1, timeout_s=60)  # client-2 carries on
        await other.close()
        await asyncio.wait({serving}, timeout=10)
        return code, answer, other.version

    code, answer, version = asyncio.run(main())
    assert code is ByeCode.REVOKED
    assert server.wait_event("client_revoked", client_id="client-1")
    refused = (
        answer.code is ErrorCode.UNAUTHORIZED
        if isinstance(answer, Error)
        else isinstance(answer, PeerClosed) and answer.code is ErrorCode.UNAUTHORIZED
    )
    assert refused, answer
    assert server.wait_event("connections_refused", reason="tls_unauthorized")  # counted
    assert version >= 1
    assert server.stop(signal.SIGTERM) == 0
