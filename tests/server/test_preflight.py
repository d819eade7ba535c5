"""A server with unusable TLS files fails before it builds its model, names every file, and
says so once more as a JSON event (what a log shipper reads)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedllm_core.certs import make_federation_pki
from fedllm_core.errors import CertificateError
from fedllm_server.preflight import check_tls_files
from fedllm_server.settings import ServerSettings


def test_every_missing_tls_file_is_named(tmp_path: Path) -> None:
    settings = ServerSettings(
        tls={"ca": tmp_path / "ca.crt", "cert": tmp_path / "s.crt", "key": tmp_path / "s.key"},
        state_dir=tmp_path / "state",
    )
    with pytest.raises(CertificateError) as failed:
        check_tls_files(settings)
    for name in ("tls.ca", "tls.cert", "tls.key"):
        assert name in str(failed.value)
    check_tls_files(ServerSettings(insecure=True, state_dir=tmp_path / "state"))  # nothing to do


def test_the_daemon_exits_77_with_a_json_fatal_event(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[tls]\n"
        f'ca = "{tmp_path / "ca.crt"}"\n'
        f'cert = "{tmp_path / "s.crt"}"\n'
        f'key = "{tmp_path / "s.key"}"\n'
        "[logging]\njson_lines = true\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "fedllm_server.cli", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 77, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (fatal,) = [e for e in events if e.get("event") == "fatal_error"]
    assert fatal["exit_code"] == 77 and "tls.key" in fatal["error"]


def test_good_files_pass_and_a_deny_list_not_written_yet_means_nothing_revoked(
    tmp_path: Path,
) -> None:
    pki = make_federation_pki(tmp_path / "pki")
    tls = {"ca": pki.ca_cert, "cert": pki.server_cert, "key": pki.server_key}
    # `fedllm certs revoke` writes the deny-list on the first revocation
    denied = {**tls, "revocation_list": tmp_path / "pki" / "revoked.json"}
    check_tls_files(ServerSettings(tls=denied, state_dir=tmp_path / "state"))
    swapped = {**tls, "cert": pki.ca_cert}  # a certificate that is not the server's
    with pytest.raises(CertificateError):
        check_tls_files(ServerSettings(tls=swapped, state_dir=tmp_path / "state"))
