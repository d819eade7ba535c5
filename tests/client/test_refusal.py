"""Permanent refusals end the client with a distinct code instead of retrying forever: a TLS
alert refusing our certificate (real, on loopback), a server certificate we cannot trust
(another CA, another host name)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from fedllm_client.daemon import ClientDaemon
from fedllm_client.refusal import Refused, ServerCertificateRejected, tls_refusal
from fedllm_core.errors import FedllmError
from fedllm_proto.testing import hello
from fedllm_proto.transport import connect, serve

from .conftest import tiny_settings

pytestmark = pytest.mark.timeout(120)


def _refusing_server(pki: Any) -> tuple[socket.socket, threading.Thread]:
    """A blocking TLS server over memory BIOs (not ours: ours closes without an alert): it
    refuses the client's certificate with the alert OpenSSL writes, as a TLS proxy would."""
    ctx = pki.server_context()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(30)

    def serve_one() -> None:
        conn, _ = sock.accept()
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            _refuse_handshake(ctx, conn)
            # read what the client sends until it hangs up: closing with unread input would
            # send RST, which can destroy the alert before the client reads it
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    return sock, thread


def _refuse_handshake(ctx: ssl.SSLContext, conn: socket.socket) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    for _ in range(20):  # a handshake is a few flights
        try:
            tls.do_handshake()
            return  # pragma: no cover - the client's certificate is from another CA
        except ssl.SSLWantReadError:
            conn.sendall(outgoing.read())
            data = conn.recv(65536)
            if not data:
                return
            incoming.write(data)
        except ssl.SSLError:
            conn.sendall(outgoing.read())  # the alert
            return


async def _refusal_seen_by_client(pki: Any, port: int) -> FedllmError | None:
    try:
        async with asyncio.timeout(30):
            peer = await connect("127.0.0.1", port, pki.foreign_client_context(), "localhost")
            await peer.send(hello())  # TLS 1.3: the alert comes with the first read
            await peer.recv()
    except Exception as exc:  # whatever shape the failure takes, it must be classed as refusal
        return tls_refusal(exc)
    return None


def test_a_tls_alert_refusing_our_certificate_is_a_refusal_not_a_lost_link(pki: Any) -> None:
    sock, thread = _refusing_server(pki)
    with sock:
        refusal = asyncio.run(_refusal_seen_by_client(pki, sock.getsockname()[1]))
        thread.join(timeout=30)
    assert isinstance(refusal, Refused) and (refusal.why, refusal.exit_code) == ("tls_refused", 78)


@pytest.mark.parametrize("mismatch", ["ca", "host_name"])
def test_a_server_certificate_we_cannot_trust_exits_77(
    pki: Any, tmp_path: Path, mismatch: str
) -> None:
    async def main() -> None:
        server = await serve(lambda peer: peer.recv(), ssl_context=pki.server_context())
        port = server.sockets[0].getsockname()[1]
        own = pki.foreign if mismatch == "ca" else pki.federation
        paths = own.clients["client-1"]
        name = "localhost" if mismatch == "ca" else "elsewhere.example"
        settings = tiny_settings(
            tmp_path / "c",
            insecure=False,
            server={"port": port, "server_name": name},
            tls={"ca": own.ca_cert, "cert": paths.cert, "key": paths.key},
        )
        try:
            await asyncio.wait_for(ClientDaemon(settings).run(), timeout=60)
        finally:
            server.close()

    with pytest.raises(ServerCertificateRejected) as rejected:
        asyncio.run(main())
    assert rejected.value.exit_code == 77
