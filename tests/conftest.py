"""Shared fixtures: a complete federation PKI made once per test session.

``pki`` gives every test (TLS unit tests, daemon end-to-end tests, the experiment runner's tests)
the same certificates without each paying to make them:

    pki.federation      PkiPaths of the real federation: CA, server certificate for DNS localhost
                        + IP 127.0.0.1, clients ``pki.clients`` and ``pki.revoked_client``, and
                        revoked.json listing the latter
    pki.foreign         an unrelated CA with its own "client-1" (same CN, wrong issuer)
    pki.server_context() / pki.client_context("client-2") / pki.foreign_client_context()
    pki.revocation()    a fresh RevocationList on the federation's revoked.json

Treat the files as read-only: a test that revokes or rewrites must copy them to ``tmp_path``
first (or call ``make_federation_pki`` itself). ssl and fedllm_proto.tls are imported inside the
helpers only, so merely loading this conftest pulls neither into a test process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedllm_core.certs import PkiPaths, make_federation_pki

if TYPE_CHECKING:
    import ssl

    from fedllm_proto.tls import RevocationList

CLIENTS = ("client-1", "client-2", "client-3")
REVOKED_CLIENT = "client-revoked"


@dataclass(frozen=True)
class Pki:
    federation: PkiPaths
    foreign: PkiPaths
    clients: tuple[str, ...] = CLIENTS
    revoked_client: str = REVOKED_CLIENT
    server_hostname: str = "localhost"

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        from fedllm_proto.tls import server_context

        fed = self.federation
        return server_context(
            fed.ca_cert, fed.server_cert, fed.server_key, require_client_cert=require_client_cert
        )

    def client_context(self, name: str = CLIENTS[0]) -> ssl.SSLContext:
        """Client context for a federation client (``pki.revoked_client`` included)."""
        from fedllm_proto.tls import client_context

        paths = self.federation.clients[name]
        return client_context(self.federation.ca_cert, paths.cert, paths.key)

    def foreign_client_context(self) -> ssl.SSLContext:
        """Trusts the federation CA, but presents a certificate from the unrelated CA.

        Built by hand: ``client_context`` itself refuses a certificate its CA did not issue.
        """
        import ssl

        paths = self.foreign.clients[CLIENTS[0]]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile=str(self.federation.ca_cert))
        ctx.load_cert_chain(str(paths.cert), str(paths.key))
        return ctx

    def revocation(self) -> RevocationList:
        from fedllm_proto.tls import RevocationList

        return RevocationList(self.federation.revocation_list)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root: Path = tmp_path_factory.mktemp("pki")
    federation = make_federation_pki(
        root / "federation",
        server_name="localhost",
        clients=CLIENTS,
        server_ips=("127.0.0.1",),
        revoked=(REVOKED_CLIENT,),
    )
    foreign = make_federation_pki(
        root / "foreign", server_name="localhost", clients=(CLIENTS[0],), server_ips=()
    )
    return Pki(federation=federation, foreign=foreign)
