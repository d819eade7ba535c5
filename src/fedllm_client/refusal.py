"""When retrying cannot help: the server refused this client, or we refuse the server.

Rules: a refusal is permanent, so the daemon exits with a distinct code instead of backing
off forever (systemd's ``RestartPreventExitStatus`` keeps it down until an operator acts):
78 when the server will not have us (certificate revoked or from another CA, fingerprint,
protocol version, Bye ``revoked`` / ``refused``), 77 when the server's certificate fails our
own check (wrong CA, host name mismatch). Everything else that ends a connection (EOF, reset,
timeouts, Bye ``restarting`` or without a code) is transient and retried.
"""

from __future__ import annotations

import ssl

from fedllm_core.errors import ExitCode, FedllmError
from fedllm_proto.messages import Bye, ByeCode
from fedllm_proto.transport import PeerClosed

# TLS alerts a server sends when it refuses our client certificate (OpenSSL reason codes).
REFUSAL_ALERTS: dict[str, str] = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "our certificate is revoked",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust our CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "our certificate has expired",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the server rejected our certificate",
    "TLSV1_ALERT_ACCESS_DENIED": "the server denied access",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
}
FATAL_BYES = (ByeCode.REVOKED, ByeCode.REFUSED)


class Refused(FedllmError):
    """The server will not have this client (exit 78); ``why`` is a stable event field."""

    exit_code = ExitCode.CONFIG

    def __init__(self, detail: str, why: str) -> None:
        super().__init__(detail)
        self.why = why


class HandshakeRefused(Refused):
    """The server refused the handshake (fingerprint, protocol version, unauthorised)."""

    def __init__(self, detail: str, why: str = "handshake_refused") -> None:
        super().__init__(detail, why)


class ServerCertificateRejected(FedllmError):
    """The server's certificate fails our check (wrong CA, host name): exit 77."""

    exit_code = ExitCode.TLS
    why = "server_certificate_rejected"


def bye_refusal(bye: Bye) -> Refused | None:
    """A Bye that says this client may not come back."""
    if bye.code not in FATAL_BYES:
        return None
    detail = f"the server said Bye ({bye.code.value}): {bye.reason}"
    return Refused(detail, why=f"bye_{bye.code.value}")


def tls_refusal(exc: BaseException) -> FedllmError | None:
    """The permanent TLS failure behind a failed connect or a lost session, if it is one."""
    cause = exc.cause if isinstance(exc, PeerClosed) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ServerCertificateRejected(
            f"the server's certificate fails verification: {cause.verify_message}"
        )
    reason = getattr(cause, "reason", None)
    if isinstance(cause, ssl.SSLError) and reason in REFUSAL_ALERTS:
        return Refused(f"TLS refused: {REFUSAL_ALERTS[reason]} ({reason})", why="tls_refused")
    return None
