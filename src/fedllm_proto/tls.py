"""TLS for the federation: TLS 1.3-only contexts, the peer's client id, the revocation deny-list.

With transport.py, the only module that imports ssl. Rules of this file:
- TLS 1.3 only, both ways. The server requires a client certificate signed by the federation CA
  (mutual TLS) unless explicitly told otherwise; the client verifies the server against the CA
  *and* the host name. OpenSSL's X509_STRICT checks are on (our certificates satisfy them).
- The client id is the peer certificate's subject commonName (CN), never a SAN: SANs are what
  host-name checks match (DNS names, IPs), a client id is neither, and `fedllm certs client`
  writes it into the CN only. Exactly one CN must be present.
- Revocation is a deny-list of certificate serials (``D/revoked.json``, written by
  ``fedllm certs revoke``), consulted after the handshake. It reloads itself when the file
  changes and on an explicit ``reload()`` (SIGHUP). A missing file means nothing is revoked; a
  corrupt one is fatal at start-up but at run time keeps the previous list (and logs why).
- Every problem with our own files is a ``CertificateError`` naming the file (exit code 77).
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fedllm_core.certs import load_certificate, read_revocations
from fedllm_core.errors import CertificateError

log = structlog.get_logger("fedllm.tls")

SslObject = ssl.SSLObject | ssl.SSLSocket
_EXPIRY_WARNING = dt.timedelta(days=30)


class PeerRejected(Exception):
    """The handshake succeeded but the peer may not join (no client id, revoked, ...)."""


# ---------------------------------------------------------------------------- contexts


def server_context(
    ca_path: Path | str,
    cert_path: Path | str,
    key_path: Path | str,
    *,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting ``cert_path``/``key_path``.

    With ``require_client_cert`` (the default) a client without a certificate signed by the CA
    at ``ca_path`` fails the handshake. Without it a certificate is still asked for and checked
    if sent, but its absence is allowed (then ``peer_identity`` raises ``PeerRejected``).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, Path(ca_path), Path(cert_path), Path(key_path))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    # No session tickets: every connection does a full handshake with a fresh certificate check
    # (clients connect rarely and stay connected; resumption would buy nothing).
    ctx.num_tickets = 0
    return ctx


def client_context(
    ca_path: Path | str, cert_path: Path | str, key_path: Path | str
) -> ssl.SSLContext:
    """A TLS 1.3 client context: presents the client certificate, verifies server + host name.

    Pass ``server_hostname`` when connecting; it must match a SAN of the server certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname by default
    _configure(ctx, Path(ca_path), Path(cert_path), Path(key_path))
    return ctx


def _configure(ctx: ssl.SSLContext, ca_path: Path, cert_path: Path, key_path: Path) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ca = _load_ca(ctx, ca_path)
    _load_chain(ctx, cert_path, key_path, ca, ca_path)


def _load_ca(ctx: ssl.SSLContext, ca_path: Path) -> x509.Certificate:
    ca = load_certificate(ca_path)  # clear error naming the file before OpenSSL's terse one
    try:
        ctx.load_verify_locations(cafile=str(ca_path))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"CA certificate {ca_path} is unusable: {exc}") from None
    return ca


def _load_chain(
    ctx: ssl.SSLContext, cert_path: Path, key_path: Path, ca: x509.Certificate, ca_path: Path
) -> None:
    cert = load_certificate(cert_path)
    _check_issued_by(cert, cert_path, ca, ca_path)
    _check_validity(cert, cert_path)
    if not key_path.is_file():
        raise CertificateError(f"private key {key_path} not found")
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise CertificateError(
                f"private key {key_path} does not match certificate {cert_path}"
            ) from None
        raise CertificateError(f"private key {key_path} is not a usable PEM key: {exc}") from None
    except OSError as exc:
        raise CertificateError(f"private key {key_path} is unreadable: {exc}") from None
    _warn_if_key_exposed(key_path)


def _check_issued_by(
    cert: x509.Certificate, cert_path: Path, ca: x509.Certificate, ca_path: Path
) -> None:
    # Caught here, a certificate from the wrong CA is one clear start-up error instead of every
    # peer failing its handshake with "unknown ca". Which of the two files is wrong cannot be
    # told from them (a CA file copied from another federation is as likely as a certificate
    # issued by it), so the error names both, and what each says.
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        issuer, holder = cert.issuer.rfc4514_string(), ca.subject.rfc4514_string()
        how = (
            f"both name {holder!r}, but that CA's key did not sign it (another CA of that name)"
            if issuer == holder
            else f"its issuer is {issuer!r}, the CA file holds {holder!r}"
        )
        raise CertificateError(
            f"certificate {cert_path} was not issued by the CA certificate {ca_path}: {how}; "
            "either the CA file is another federation's or the certificate is"
        ) from None


def _check_validity(cert: x509.Certificate, cert_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise CertificateError(f"certificate {cert_path} expired on {cert.not_valid_after_utc}")
    if cert.not_valid_after_utc - now < _EXPIRY_WARNING:
        log.warning(
            "tls_certificate_expires_soon",
            path=str(cert_path),
            not_after=cert.not_valid_after_utc.isoformat(),
        )


def _warn_if_key_exposed(key_path: Path) -> None:
    if os.stat(key_path).st_mode & 0o077:
        log.warning("tls_key_permissions_too_open", path=str(key_path), expected="0600")


# ---------------------------------------------------------------------------- the peer


def peer_identity(ssl_object: SslObject) -> str:
    """The client id of a connected peer: the CN of its verified certificate.

    Raises ``PeerRejected`` if the peer sent no (verified) certificate or it has no single CN.
    """
    cert = ssl_object.getpeercert()
    if not cert:  # None: no certificate; {}: one was sent but not verified
        raise PeerRejected("peer presented no verified client certificate")
    subject: Any = cert.get("subject", ())  # ((("commonName", "x"),), ...) per RDN
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    if len(names) != 1 or not names[0]:
        raise PeerRejected(f"client certificate must carry exactly one commonName, has {names}")
    return str(names[0])


def peer_serial(ssl_object: SslObject) -> int | None:
    """Serial number of the peer's verified certificate, or None without one."""
    cert = ssl_object.getpeercert()
    serial = cert.get("serialNumber") if cert else None
    return int(str(serial), 16) if serial else None


def authorize_peer(ssl_object: SslObject, revocation: RevocationList | None = None) -> str:
    """``peer_identity`` plus the deny-list check: the client id, or ``PeerRejected``."""
    client_id = peer_identity(ssl_object)
    if revocation is not None and revocation.is_revoked(ssl_object):
        raise PeerRejected(f"certificate of {client_id!r} is revoked")
    return client_id


def handshake_failure_reason(exc: BaseException) -> str:
    """A one-line, operator-readable reason for a failed TLS handshake (for the log)."""
    text = f"{getattr(exc, 'reason', '') or ''} {exc}"
    for marker, reason in _HANDSHAKE_REASONS:
        if marker in text:
            return reason
    if isinstance(exc, ConnectionError | EOFError):  # asyncio.IncompleteReadError too
        return "peer closed the connection during the handshake (did it reject our certificate?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected: {exc.verify_message}"
    return f"TLS handshake failed: {exc}"


# OpenSSL reason codes, as seen on the server side unless noted.
_HANDSHAKE_REASONS: tuple[tuple[str, str], ...] = (
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "client sent no certificate"),
    ("CERTIFICATE_REQUIRED", "server requires a client certificate"),  # client side
    ("WRONG_VERSION_NUMBER", "not a TLS 1.3 handshake (plaintext or old TLS client?)"),
    ("HTTP_REQUEST", "plaintext HTTP request on the TLS port"),
    ("UNSUPPORTED_PROTOCOL", "peer offers no TLS 1.3"),
    ("PROTOCOL_VERSION", "peer offers no TLS 1.3"),
    ("unable to get local issuer certificate", "certificate not issued by the federation CA"),
    ("self-signed certificate", "self-signed certificate, not issued by the federation CA"),
    ("certificate has expired", "certificate expired"),
    ("certificate purpose", "certificate is not for this role (client vs server)"),
    ("Hostname mismatch", "server certificate does not match the host name"),  # client side
    ("ALERT_BAD_CERTIFICATE", "peer rejected our certificate (wrong CA or host name?)"),
    ("ALERT_UNKNOWN_CA", "peer does not trust our CA"),
)


# ---------------------------------------------------------------------------- revocation


_Stamp = tuple[int, int, int] | None


class RevocationList:
    """Deny-list of revoked certificate serials, re-read whenever its file changes.

    Construction raises ``CertificateError`` on a corrupt file (a daemon should not start with
    a deny-list it cannot read). Later, an automatic re-read that fails logs
    ``revocation_list_invalid`` once and keeps the previous list; ``reload()`` raises instead,
    so a SIGHUP handler can log the error itself.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._serials: frozenset[int] = frozenset()
        self._stamp: _Stamp = None
        self.reload()

    def __len__(self) -> int:
        return len(self._serials)

    def reload(self) -> int:
        """Re-read the file now; returns the number of revoked serials."""
        stamp = self._file_stamp()
        try:
            entries = read_revocations(self.path)
        except CertificateError:
            self._stamp = stamp  # the automatic check stays quiet until the file changes again
            raise
        self._serials = frozenset(entry.serial for entry in entries)
        self._stamp = stamp
        log.info("revocation_list_loaded", path=str(self.path), revoked=len(self._serials))
        return len(self._serials)

    def is_revoked(self, ssl_object: SslObject) -> bool:
        """True if the peer's certificate is on the (freshly checked) deny-list."""
        serial = peer_serial(ssl_object)
        return serial is not None and self.is_serial_revoked(serial)

    def is_serial_revoked(self, serial: int) -> bool:
        self._reload_if_changed()
        return serial in self._serials

    def _reload_if_changed(self) -> None:
        if self._file_stamp() == self._stamp:
            return
        try:
            self.reload()
        except CertificateError as exc:
            log.error(
                "revocation_list_invalid", path=str(self.path), error=str(exc), kept=len(self)
            )

    def _file_stamp(self) -> _Stamp:
        # inode + size + mtime: `fedllm certs revoke` renames a new file into place, so even a
        # rewrite within the mtime granularity is seen as a change.
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)
