"""Checks that fail a bad start-up in seconds, before the model is built.

Building the central model takes seconds (torch, weights, tokenizer); a server whose TLS files
are missing used to spend them before saying so, and named only the first missing file. Here
every missing file is named at once, then the context is built once (PEM, issuer, validity,
key match) exactly as the daemon will build it.
"""

from __future__ import annotations

from pathlib import Path

from fedllm_core.errors import CertificateError
from fedllm_proto.tls import RevocationList, server_context
from fedllm_server.settings import ServerSettings


def check_tls_files(settings: ServerSettings) -> None:
    """CertificateError (exit 77) naming every unusable TLS file; nothing in insecure mode."""
    if settings.insecure:
        return
    tls = settings.tls
    # not tls.revocation_list: a deny-list that does not exist yet means nothing is revoked
    files = {"tls.ca": tls.ca, "tls.cert": tls.cert, "tls.key": tls.key}
    missing = [
        f"{key} = {path}" for key, path in files.items() if path and not Path(path).is_file()
    ]
    if missing:
        raise CertificateError(f"TLS files not found: {'; '.join(missing)}")
    assert tls.ca is not None and tls.cert is not None and tls.key is not None  # settings rule
    server_context(tls.ca, tls.cert, tls.key)
    if tls.revocation_list is not None:
        RevocationList(tls.revocation_list)
