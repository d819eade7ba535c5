"""fedllm_proto.tls without sockets: contexts, file errors, peer identity, the deny-list."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from structlog.testing import capture_logs

from fedllm_core import certs
from fedllm_core.errors import CertificateError, ExitCode
from fedllm_proto import tls


@pytest.fixture
def fed(pki: Any) -> certs.PkiPaths:
    return pki.federation


@pytest.fixture
def own_pki(tmp_path: Path) -> certs.PkiPaths:
    """A private PKI for tests that revoke or rewrite files."""
    return certs.make_federation_pki(tmp_path / "pki", clients=["a", "b"])


class FakeSslObject:
    """Stands in for ssl.SSLObject: only getpeercert() is consulted."""

    def __init__(self, cert: dict[str, Any] | None) -> None:
        self.cert = cert

    def getpeercert(self) -> dict[str, Any] | None:
        return self.cert


def _peer(cn: str, serial: int = 0x1234) -> FakeSslObject:
    subject = ((("organizationName", "fedllm"),), (("commonName", cn),))
    return FakeSslObject({"subject": subject, "serialNumber": f"{serial:X}"})


def _serial(cert: Path) -> int:
    return certs.load_certificate(cert).serial_number


# ---------------------------------------------------------------------------- contexts


def test_server_context_is_tls13_only(fed: certs.PkiPaths) -> None:
    ctx = tls.server_context(fed.ca_cert, fed.server_cert, fed.server_key)
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_3,) * 2


def test_server_issues_no_session_tickets(fed: certs.PkiPaths) -> None:
    assert tls.server_context(fed.ca_cert, fed.server_cert, fed.server_key).num_tickets == 0


def test_server_requires_client_certificate_by_default(fed: certs.PkiPaths) -> None:
    ctx = tls.server_context(fed.ca_cert, fed.server_cert, fed.server_key)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_server_can_make_client_certificate_optional(fed: certs.PkiPaths) -> None:
    ctx = tls.server_context(
        fed.ca_cert, fed.server_cert, fed.server_key, require_client_cert=False
    )
    assert ctx.verify_mode == ssl.CERT_OPTIONAL


def test_client_context_checks_ca_and_host_name(fed: certs.PkiPaths) -> None:
    c = fed.clients["client-1"]
    ctx = tls.client_context(fed.ca_cert, c.cert, c.key)
    assert (ctx.verify_mode, ctx.check_hostname, ctx.minimum_version) == (
        ssl.CERT_REQUIRED,
        True,
        ssl.TLSVersion.TLSv1_3,
    )


# ---------------------------------------------------------------------------- our own files


def _server_ctx_error(ca: Path, cert: Path, key: Path) -> CertificateError:
    with pytest.raises(CertificateError) as info:
        tls.server_context(ca, cert, key)
    return info.value


def test_missing_certificate_is_named(fed: certs.PkiPaths, tmp_path: Path) -> None:
    err = _server_ctx_error(fed.ca_cert, tmp_path / "nope.crt", fed.server_key)
    assert "nope.crt not found" in str(err)


def test_missing_key_is_named(fed: certs.PkiPaths, tmp_path: Path) -> None:
    err = _server_ctx_error(fed.ca_cert, fed.server_cert, tmp_path / "nope.key")
    assert "nope.key not found" in str(err)


def test_missing_ca_is_named(fed: certs.PkiPaths, tmp_path: Path) -> None:
    err = _server_ctx_error(tmp_path / "noca.crt", fed.server_cert, fed.server_key)
    assert "noca.crt not found" in str(err)


def test_certificate_error_exits_77(fed: certs.PkiPaths, tmp_path: Path) -> None:
    err = _server_ctx_error(fed.ca_cert, tmp_path / "nope.crt", fed.server_key)
    assert err.exit_code == ExitCode.TLS == 77


def test_mismatched_key_is_named(fed: certs.PkiPaths) -> None:
    err = _server_ctx_error(fed.ca_cert, fed.server_cert, fed.clients["client-1"].key)
    assert f"{fed.clients['client-1'].key} does not match" in str(err)


def test_garbage_certificate_is_named(fed: certs.PkiPaths, tmp_path: Path) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert "bad.crt is unreadable" in str(_server_ctx_error(fed.ca_cert, bad, fed.server_key))


def test_garbage_key_is_named(fed: certs.PkiPaths, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("hello\n")
    assert "bad.key is not a usable PEM key" in str(
        _server_ctx_error(fed.ca_cert, fed.server_cert, bad)
    )


def test_certificate_from_another_ca_is_refused_at_start(pki: Any) -> None:
    foreign = pki.foreign.clients["client-1"]
    with pytest.raises(CertificateError, match="not issued by the CA certificate"):
        tls.client_context(pki.federation.ca_cert, foreign.cert, foreign.key)


def test_a_wrong_ca_file_is_named_not_only_the_certificate(pki: Any) -> None:
    # the client's own certificate is the federation's; its tls.ca is another federation's
    own = pki.federation.clients["client-1"]
    with pytest.raises(CertificateError) as failed:
        tls.client_context(pki.foreign.ca_cert, own.cert, own.key)
    message = str(failed.value)
    assert str(pki.foreign.ca_cert) in message and "the CA file is another federation's" in message


def _expired_client(pki: certs.PkiPaths) -> tuple[Path, Path]:
    """A client certificate that expired yesterday, signed by the PKI's CA."""
    paths = certs.issue_client(pki.dir, "old")
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    cert = certs.load_certificate(paths.cert)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    expired = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    paths.cert.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    return paths.cert, paths.key


def test_expired_certificate_is_refused_at_start(own_pki: certs.PkiPaths) -> None:
    cert, key = _expired_client(own_pki)
    with pytest.raises(CertificateError, match=r"old\.crt expired"):
        tls.client_context(own_pki.ca_cert, cert, key)


def test_zero_day_certificate_is_refused(own_pki: certs.PkiPaths) -> None:
    with pytest.raises(CertificateError, match="at least 1 day"):
        certs.issue_client(own_pki.dir, "c", days=0)


def test_readable_key_logs_a_warning(own_pki: certs.PkiPaths) -> None:
    own_pki.server_key.chmod(0o644)
    with capture_logs() as logs:
        tls.server_context(own_pki.ca_cert, own_pki.server_cert, own_pki.server_key)
    assert "tls_key_permissions_too_open" in [e["event"] for e in logs]


# ---------------------------------------------------------------------------- peer identity


def test_peer_identity_is_the_common_name() -> None:
    assert tls.peer_identity(_peer("gw-7")) == "gw-7"  # type: ignore[arg-type]


@pytest.mark.parametrize("cert", [None, {}])
def test_peer_without_verified_certificate_is_rejected(cert: dict[str, Any] | None) -> None:
    with pytest.raises(tls.PeerRejected, match="no verified client certificate"):
        tls.peer_identity(FakeSslObject(cert))  # type: ignore[arg-type]


def test_peer_certificate_without_cn_is_rejected() -> None:
    peer = FakeSslObject({"subject": ((("organizationName", "fedllm"),),)})
    with pytest.raises(tls.PeerRejected, match="exactly one commonName"):
        tls.peer_identity(peer)  # type: ignore[arg-type]


def test_peer_certificate_with_two_cns_is_rejected() -> None:
    peer = FakeSslObject({"subject": ((("commonName", "a"),), (("commonName", "b"),))})
    with pytest.raises(tls.PeerRejected, match="exactly one commonName"):
        tls.peer_identity(peer)  # type: ignore[arg-type]


def test_peer_serial_is_parsed_from_hex() -> None:
    assert tls.peer_serial(_peer("x", serial=0xABCDEF)) == 0xABCDEF  # type: ignore[arg-type]


def test_authorize_peer_rejects_a_revoked_serial(pki: Any) -> None:
    revoked = _serial(pki.federation.clients[pki.revoked_client].cert)
    with pytest.raises(tls.PeerRejected, match="revoked"):
        tls.authorize_peer(_peer(pki.revoked_client, revoked), pki.revocation())  # type: ignore[arg-type]


def test_authorize_peer_returns_the_id_of_a_good_peer(pki: Any) -> None:
    serial = _serial(pki.federation.clients["client-2"].cert)
    peer = _peer("client-2", serial)
    assert tls.authorize_peer(peer, pki.revocation()) == "client-2"  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- failure reasons


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ssl.SSLError(1, "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] x"), "no certificate"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "plaintext"),
        (ssl.SSLError(1, "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol"), "no TLS 1.3"),
        (ConnectionResetError(), "closed the connection during the handshake"),
    ],
)
def test_handshake_failures_get_readable_reasons(exc: BaseException, expected: str) -> None:
    assert expected in tls.handshake_failure_reason(exc)


# ---------------------------------------------------------------------------- deny-list


def test_missing_revocation_file_revokes_nothing(tmp_path: Path) -> None:
    assert len(tls.RevocationList(tmp_path / "revoked.json")) == 0


def test_corrupt_revocation_file_is_fatal_at_start(tmp_path: Path) -> None:
    (tmp_path / "revoked.json").write_text("{")
    with pytest.raises(CertificateError, match=r"revoked\.json is corrupt"):
        tls.RevocationList(tmp_path / "revoked.json")


def test_revocation_is_seen_without_restart(own_pki: certs.PkiPaths) -> None:
    deny = tls.RevocationList(own_pki.revocation_list)
    certs.revoke(own_pki.dir, "a")
    assert deny.is_serial_revoked(_serial(own_pki.clients["a"].cert))


def test_other_clients_stay_allowed(own_pki: certs.PkiPaths) -> None:
    deny = tls.RevocationList(own_pki.revocation_list)
    certs.revoke(own_pki.dir, "a")
    assert not deny.is_serial_revoked(_serial(own_pki.clients["b"].cert))


def test_explicit_reload_counts_entries(own_pki: certs.PkiPaths) -> None:
    deny = tls.RevocationList(own_pki.revocation_list)
    certs.revoke(own_pki.dir, "a")
    certs.revoke(own_pki.dir, "b")
    assert deny.reload() == 2


def test_in_place_edit_with_same_size_is_seen(own_pki: certs.PkiPaths) -> None:
    # An operator editing the file in place (same inode, same length) changes only the mtime.
    certs.revoke(own_pki.dir, "a")
    deny = tls.RevocationList(own_pki.revocation_list)
    a, b = (f"{_serial(own_pki.clients[n].cert):x}" for n in "ab")
    text = own_pki.revocation_list.read_text()
    with open(own_pki.revocation_list, "r+") as handle:
        handle.write(text.replace(a, b.rjust(len(a), "0")))
    st = own_pki.revocation_list.stat()
    os.utime(own_pki.revocation_list, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert deny.is_serial_revoked(int(b, 16))


def _corrupt_after_revoking_a(own_pki: certs.PkiPaths) -> tls.RevocationList:
    certs.revoke(own_pki.dir, "a")
    deny = tls.RevocationList(own_pki.revocation_list)
    tmp = own_pki.dir / "tmp.json"
    tmp.write_text('{"format": "fedllm-revocations", "version": 1, "revoked": [')
    os.replace(tmp, own_pki.revocation_list)
    return deny


def test_corrupt_file_at_run_time_keeps_the_previous_list(own_pki: certs.PkiPaths) -> None:
    deny = _corrupt_after_revoking_a(own_pki)
    assert deny.is_serial_revoked(_serial(own_pki.clients["a"].cert))


def test_corrupt_file_at_run_time_is_logged_once(own_pki: certs.PkiPaths) -> None:
    deny = _corrupt_after_revoking_a(own_pki)
    with capture_logs() as logs:
        for _ in range(3):
            deny.is_serial_revoked(1)
    assert [e["event"] for e in logs] == ["revocation_list_invalid"]


def test_explicit_reload_of_corrupt_file_raises_and_keeps_list(own_pki: certs.PkiPaths) -> None:
    deny = _corrupt_after_revoking_a(own_pki)
    with pytest.raises(CertificateError, match="corrupt"):
        deny.reload()
    assert len(deny) == 1


def test_deleted_file_revokes_nothing(own_pki: certs.PkiPaths) -> None:
    certs.revoke(own_pki.dir, "a")
    deny = tls.RevocationList(own_pki.revocation_list)
    own_pki.revocation_list.unlink()
    assert not deny.is_serial_revoked(_serial(own_pki.clients["a"].cert))


def test_fixture_revocation_list_denies_the_revoked_client(pki: Any) -> None:
    serial = _serial(pki.federation.clients[pki.revoked_client].cert)
    assert pki.revocation().is_serial_revoked(serial)


def test_copy_of_pki_is_usable_elsewhere(pki: Any, tmp_path: Path) -> None:
    # Operators copy the files to other hosts: nothing in them depends on the directory.
    dest = Path(shutil.copytree(pki.federation.dir, tmp_path / "copy"))
    ctx = tls.server_context(dest / "ca.crt", dest / "server.crt", dest / "server.key")
    assert ctx.verify_mode == ssl.CERT_REQUIRED
