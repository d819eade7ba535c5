"""fedllm_core.certs: what goes into the certificates, file modes, refusals, the deny-list."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedllm_core import certs
from fedllm_core.errors import CertificateError, ExitCode


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path / "pki")
    return tmp_path / "pki"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    # With umask 0 a key created with the default mode would be world-readable.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sans(path: Path) -> list[object]:
    cert = certs.load_certificate(path)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [name.value for name in ext]


def _eku(path: Path) -> list[x509.ObjectIdentifier]:
    cert = certs.load_certificate(path)
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_keys_are_0600_even_with_umask_zero(tmp_path: Path, umask_zero: None) -> None:
    pki = certs.make_federation_pki(tmp_path / "pki", clients=["c1"])
    keys = [pki.ca_key, pki.server_key, pki.clients["c1"].key]
    assert [_mode(k) for k in keys] == [0o600] * 3


def test_certificates_are_world_readable(tmp_path: Path, umask_zero: None) -> None:
    pki = certs.make_federation_pki(tmp_path / "pki", clients=["c1"])
    assert {_mode(p) for p in (pki.ca_cert, pki.server_cert, pki.clients["c1"].cert)} == {0o644}


def test_keys_are_ec_p256(ca_dir: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(certs.issue_client(ca_dir, "c1").key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_server_sans_hold_only_what_was_asked(ca_dir: Path) -> None:
    cert, _ = certs.issue_server(ca_dir, "fl.example.org", ["10.0.0.5"])
    assert _sans(cert) == ["fl.example.org", ipaddress.ip_address("10.0.0.5")]


def test_server_name_given_as_ip_becomes_an_ip_san(ca_dir: Path) -> None:
    cert, _ = certs.issue_server(ca_dir, "192.0.2.7", ["192.0.2.7"])
    assert _sans(cert) == [ipaddress.ip_address("192.0.2.7")]


def test_server_certificate_is_for_servers_only(ca_dir: Path) -> None:
    cert, _ = certs.issue_server(ca_dir, "localhost")
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_certificate_cn_is_the_client_id(ca_dir: Path) -> None:
    cert = certs.load_certificate(certs.issue_client(ca_dir, "gw-07").cert)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["gw-07"]


def test_client_certificate_is_for_clients_only(ca_dir: Path) -> None:
    assert _eku(certs.issue_client(ca_dir, "c1").cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_client_certificate_is_signed_by_the_ca(ca_dir: Path) -> None:
    ca = certs.load_certificate(ca_dir / "ca.crt")
    certs.load_certificate(certs.issue_client(ca_dir, "c1").cert).verify_directly_issued_by(ca)


def test_refuses_to_overwrite_the_ca(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match=r"refusing to overwrite .*ca\.crt"):
        certs.init_ca(ca_dir)


def test_refused_overwrite_exits_with_the_tls_code(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "c1")
    with pytest.raises(CertificateError) as info:
        certs.issue_client(ca_dir, "c1")
    assert info.value.exit_code == ExitCode.TLS


def test_force_replaces_the_certificate(ca_dir: Path) -> None:
    first = certs.load_certificate(certs.issue_client(ca_dir, "c1").cert).serial_number
    again = certs.load_certificate(certs.issue_client(ca_dir, "c1", force=True).cert)
    assert again.serial_number != first


def test_force_keeps_key_mode_0600(ca_dir: Path, umask_zero: None) -> None:
    certs.issue_client(ca_dir, "c1")
    assert _mode(certs.issue_client(ca_dir, "c1", force=True).key) == 0o600


def test_no_temp_files_left_behind(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "c1")
    assert sorted(p.name for p in ca_dir.iterdir()) == ["c1.crt", "c1.key", "ca.crt", "ca.key"]


def test_issuing_without_a_ca_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="fedllm certs init"):
        certs.issue_client(tmp_path, "c1")


@pytest.mark.parametrize("bad", ["", "ca", "server", "../evil", "a b", "-x", "x" * 65])
def test_invalid_client_ids_are_refused(ca_dir: Path, bad: str) -> None:
    with pytest.raises(CertificateError, match="invalid client id"):
        certs.issue_client(ca_dir, bad)


def test_invalid_server_ip_is_refused(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match="not an IP address"):
        certs.issue_server(ca_dir, "localhost", ["999.1.1.1"])


def test_revoke_lists_the_certificate_serial(ca_dir: Path) -> None:
    serial = certs.load_certificate(certs.issue_client(ca_dir, "c1").cert).serial_number
    certs.revoke(ca_dir, "c1")
    entries = certs.read_revocations(certs.revocation_path(ca_dir))
    assert [(e.serial, e.name) for e in entries] == [(serial, "c1")]


def test_revoking_twice_adds_one_entry(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "c1")
    certs.revoke(ca_dir, "c1")
    _, added = certs.revoke(ca_dir, "c1")
    assert (added, len(certs.read_revocations(certs.revocation_path(ca_dir)))) == (False, 1)


def test_revoking_an_unknown_client_names_the_file(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match=r"ghost\.crt not found"):
        certs.revoke(ca_dir, "ghost")


def test_missing_revocation_list_revokes_nothing(tmp_path: Path) -> None:
    assert certs.read_revocations(tmp_path / "revoked.json") == ()


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"format": "other", "version": 1, "revoked": []}',
        '{"format": '
        '"fedllm-revocations", "version": 1, "revoked": [{"serial": "zz", "name": "a", '
        '"revoked_at": "t"}]}',
        "[]",
    ],
)
def test_corrupt_revocation_list_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "revoked.json"
    path.write_text(text)
    with pytest.raises(CertificateError, match=r"revoked\.json is corrupt"):
        certs.read_revocations(path)


def test_revocation_file_is_plain_json_with_hex_serials(ca_dir: Path) -> None:
    serial = certs.load_certificate(certs.issue_client(ca_dir, "c1").cert).serial_number
    certs.revoke(ca_dir, "c1")
    doc = json.loads(certs.revocation_path(ca_dir).read_text())
    assert doc["revoked"][0]["serial"] == f"{serial:x}"


def test_make_federation_pki_revokes_what_it_is_told(tmp_path: Path) -> None:
    pki = certs.make_federation_pki(tmp_path / "p", clients=["a"], revoked=["b"])
    names = [e.name for e in certs.read_revocations(pki.revocation_list)]
    assert (sorted(pki.clients), names) == (["a", "b"], ["b"])
