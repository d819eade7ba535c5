"""Federation PKI on disk: one CA, one server certificate, client certificates, a deny-list.

Layout of a certificate directory D (the operator's workflow is in certs/README.md):

    D/ca.crt, D/ca.key            the federation CA (ca.key belongs on an offline machine)
    D/server.crt, D/server.key    the server; SANs = its host name + only the IPs asked for
    D/<id>.crt, D/<id>.key        one pair per client; the certificate's CN *is* the client id
    D/revoked.json                serials the server refuses (read by fedllm_proto.tls)

Rules of this file:
- Keys are EC P-256 signed with ECDSA-SHA256: small, fast, and accepted by every OpenSSL that
  Python's ssl module links against for TLS 1.3 (Ed25519 certificates are not, everywhere).
- Certificates satisfy OpenSSL's X509_STRICT checks (SKI/AKI, critical basic constraints and key
  usage, one EKU per role) so a server certificate cannot log in as a client and vice versa.
- A key file is *created* 0600 (``os.open`` with the mode), never chmod-ed afterwards, so there
  is no moment at which it is readable by others. Every file goes to a temporary name first and
  is renamed into place, so a crash never leaves half a key or half a deny-list.
- Nothing is overwritten unless ``force=True``; refusals raise ``CertificateError`` naming the
  file. Existence is checked for all outputs before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedllm_core.errors import CertificateError
from fedllm_core.files import atomic_write

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest lifetime mainstream TLS clients accept; rotate well before it
_CLOCK_SKEW = dt.timedelta(minutes=5)  # hosts whose clocks lag a little still accept new certs
_REVOCATION_FORMAT = "fedllm-revocations"
_REVOCATION_VERSION = 1

# A client id is also a file name (D/<id>.crt) and a log field: keep it boring.
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED_IDS = frozenset({"ca", "server"})  # would clash with D/ca.* and D/server.*
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class ClientPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PkiPaths:
    """Where every file of one federation PKI lives (see the module header)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    revocation_list: Path
    clients: Mapping[str, ClientPaths]


@dataclass(frozen=True)
class Revoked:
    """One deny-list entry; ``serial`` is the certificate's serial number."""

    serial: int
    name: str
    revoked_at: str


# ---------------------------------------------------------------------------- paths and names


def ca_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "ca.crt", directory / "ca.key"


def server_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "server.crt", directory / "server.key"


def client_paths(directory: Path, name: str) -> ClientPaths:
    check_client_id(name)
    return ClientPaths(directory / f"{name}.crt", directory / f"{name}.key")


def revocation_path(directory: Path) -> Path:
    return directory / "revoked.json"


def check_client_id(name: str) -> str:
    """Return ``name`` if it is a valid client id, else raise ``CertificateError``."""
    if not _CLIENT_ID.fullmatch(name) or name.lower() in _RESERVED_IDS:
        raise CertificateError(
            f"invalid client id {name!r}: use 1-64 of [A-Za-z0-9._-], starting with a letter "
            "or digit, and not 'ca' or 'server'"
        )
    return name


def _host_san(name: str) -> x509.GeneralName:
    with contextlib.suppress(ValueError):
        return x509.IPAddress(ipaddress.ip_address(name))
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise CertificateError(f"invalid server host name {name!r}")
    return x509.DNSName(name.rstrip("."))


def _ip(value: str | IPAddress) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise CertificateError(f"not an IP address: {value!r}") from None


# ---------------------------------------------------------------------------- files


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise CertificateError(
            f"refusing to overwrite {', '.join(existing)} (pass --force / force=True)"
        )


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # daemons start unattended; the 0600 mode protects it
    )
    atomic_write(key_path, pem_key, 0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"certificate {path} not found") from None
    except (OSError, ValueError) as exc:
        raise CertificateError(f"certificate {path} is unreadable: {exc}") from None


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_paths(directory)
    if not cert_path.exists() or not key_path.exists():
        raise CertificateError(
            f"no CA in {directory} ({cert_path.name}/{key_path.name} missing); "
            f"run `fedllm certs init --dir {directory}` first"
        )
    cert = load_certificate(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"CA key {key_path} is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertificateError(f"CA key {key_path} does not match {cert_path}")
    return cert, key


# ---------------------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedllm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    if days < 1:
        raise CertificateError(f"a certificate must be valid for at least 1 day, not {days}")
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _leaf_usage() -> x509.KeyUsage:
    # TLS 1.3 with ECDSA only ever signs the handshake: no key encipherment or agreement.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _issue_leaf(
    directory: Path,
    common_name: str,
    eku: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(_name(common_name), ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def init_ca(
    directory: Path,
    *,
    force: bool = False,
    common_name: str = "fedllm federation CA",
    days: int = CA_DAYS,
) -> tuple[Path, Path]:
    """Create the federation CA (``D/ca.crt``, ``D/ca.key``); returns their paths."""
    directory = Path(directory)
    cert_path, key_path = ca_paths(directory)
    _refuse_existing((cert_path, key_path), force)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    ca_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(subject, subject, key, days)
        # path_length=0: the CA signs leaves only, never a sub-CA
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


def issue_server(
    directory: Path,
    name: str,
    ips: Iterable[str | IPAddress] = (),
    *,
    force: bool = False,
    days: int = LEAF_DAYS,
) -> tuple[Path, Path]:
    """Issue ``D/server.crt``/``.key`` for host ``name`` plus the given IP SANs.

    Only the names asked for go in: ``localhost``/``127.0.0.1`` are there only if passed.
    """
    directory = Path(directory)
    sans = [_host_san(name)]
    sans += [x509.IPAddress(ip) for ip in dict.fromkeys(_ip(v) for v in ips)]
    sans = list(dict.fromkeys(sans))  # a name given both ways appears once
    cert_path, key_path = server_paths(directory)
    _refuse_existing((cert_path, key_path), force)
    cert, key = _issue_leaf(directory, name, ExtendedKeyUsageOID.SERVER_AUTH, sans, days)
    _write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path


def issue_client(
    directory: Path, name: str, *, force: bool = False, days: int = LEAF_DAYS
) -> ClientPaths:
    """Issue ``D/<name>.crt``/``.key``; the certificate's CN is the client id ``name``."""
    directory = Path(directory)
    paths = client_paths(directory, name)
    _refuse_existing((paths.cert, paths.key), force)
    cert, key = _issue_leaf(directory, name, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)
    _write_pair(paths.cert, paths.key, cert, key)
    return paths


# ---------------------------------------------------------------------------- revocation


def read_revocations(path: Path) -> tuple[Revoked, ...]:
    """Parse a deny-list; a missing file means nothing is revoked.

    Raises ``CertificateError`` naming the file when it exists but is not a valid list.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise CertificateError(f"revocation list {path} is unreadable: {exc}") from None
    try:
        doc = json.loads(raw)
        if doc.get("format") != _REVOCATION_FORMAT or doc.get("version") != _REVOCATION_VERSION:
            raise ValueError(f"expected format {_REVOCATION_FORMAT!r} v{_REVOCATION_VERSION}")
        return tuple(
            Revoked(int(e["serial"], 16), str(e["name"]), str(e["revoked_at"]))
            for e in doc["revoked"]
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CertificateError(f"revocation list {path} is corrupt: {exc}") from None


def write_revocations(path: Path, entries: Iterable[Revoked]) -> None:
    doc = {
        "format": _REVOCATION_FORMAT,
        "version": _REVOCATION_VERSION,
        "revoked": [
            {"serial": f"{e.serial:x}", "name": e.name, "revoked_at": e.revoked_at} for e in entries
        ],
    }
    atomic_write(Path(path), (json.dumps(doc, indent=2) + "\n").encode(), 0o644)


def revoke(directory: Path, name: str) -> tuple[Revoked, bool]:
    """Add client ``name``'s current certificate to ``D/revoked.json``.

    Returns the entry and whether it was newly added (False: it was already revoked).
    """
    directory = Path(directory)
    cert_path = client_paths(directory, name).cert
    cert = load_certificate(cert_path)
    ca_cert = load_certificate(ca_paths(directory)[0])
    if cert.issuer != ca_cert.subject:
        raise CertificateError(f"{cert_path} was not issued by the CA in {directory}")
    entries = read_revocations(revocation_path(directory))
    for entry in entries:
        if entry.serial == cert.serial_number:
            return entry, False
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    entry = Revoked(cert.serial_number, name, now)
    write_revocations(revocation_path(directory), (*entries, entry))
    return entry, True


# ---------------------------------------------------------------------------- one-call PKI


def make_federation_pki(
    directory: Path,
    server_name: str = "localhost",
    clients: Iterable[str] = ("client-1",),
    *,
    server_ips: Iterable[str | IPAddress] = ("127.0.0.1",),
    revoked: Iterable[str] = (),
    force: bool = False,
) -> PkiPaths:
    """Create a complete PKI in ``directory`` (tests, benchmarks, the experiment runner).

    ``revoked`` names clients (also issued) whose certificates go straight on the deny-list.
    """
    directory = Path(directory)
    revoked = tuple(revoked)
    names = tuple(dict.fromkeys((*clients, *revoked)))
    ca_cert, ca_key = init_ca(directory, force=force)
    server_cert, server_key = issue_server(directory, server_name, server_ips, force=force)
    issued = {name: issue_client(directory, name, force=force) for name in names}
    if force:
        revocation_path(directory).unlink(missing_ok=True)  # old serials mean nothing now
    for name in revoked:
        revoke(directory, name)
    return PkiPaths(
        dir=directory,
        ca_cert=ca_cert,
        ca_key=ca_key,
        server_cert=server_cert,
        server_key=server_key,
        revocation_list=revocation_path(directory),
        clients=issued,
    )
