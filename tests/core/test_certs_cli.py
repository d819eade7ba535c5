"""`fedllm certs ...` end to end: the installed console script in a real subprocess."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedllm_core.certs import load_certificate

FEDLLM = str(Path(sys.executable).parent / "fedllm")  # the venv's console script


def fedllm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FEDLLM, "certs", *map(str, args)], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory taken through init, server, two clients and a revocation."""
    d = tmp_path_factory.mktemp("cli") / "pki"
    steps = [
        ("init", "--dir", d),
        ("server", "--dir", d, "--name", "fl.example.org", "--ip", "10.1.2.3"),
        ("client", "--dir", d, "--name", "gw-1"),
        ("client", "--dir", d, "--name", "gw-2"),
        ("revoke", "--dir", d, "--name", "gw-2"),
    ]
    for step in steps:
        result = fedllm(*step)
        assert result.returncode == 0, result.stderr
    return d


def test_writes_every_file(issued: Path) -> None:
    assert sorted(p.name for p in issued.iterdir()) == [
        "ca.crt", "ca.key", "gw-1.crt", "gw-1.key", "gw-2.crt", "gw-2.key",
        "revoked.json", "server.crt", "server.key",
    ]  # fmt: skip


def test_keys_are_0600(issued: Path) -> None:
    modes = {stat.S_IMODE(p.stat().st_mode) for p in issued.glob("*.key")}
    assert modes == {0o600}


def test_revoke_writes_the_clients_serial(issued: Path) -> None:
    serial = load_certificate(issued / "gw-2.crt").serial_number
    doc = json.loads((issued / "revoked.json").read_text())
    assert [(e["name"], int(e["serial"], 16)) for e in doc["revoked"]] == [("gw-2", serial)]


def test_refuses_to_overwrite_without_force(issued: Path) -> None:
    before = (issued / "gw-1.crt").read_bytes()
    result = fedllm("client", "--dir", issued, "--name", "gw-1")
    assert (result.returncode, (issued / "gw-1.crt").read_bytes()) == (77, before)


def test_refusal_message_names_the_file_and_force(issued: Path) -> None:
    result = fedllm("init", "--dir", issued)
    assert "ca.crt" in result.stderr and "--force" in result.stderr


def test_force_overwrites(tmp_path: Path) -> None:
    assert fedllm("init", "--dir", tmp_path).returncode == 0
    before = (tmp_path / "ca.crt").read_bytes()
    assert fedllm("init", "--dir", tmp_path, "--force").returncode == 0
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_issuing_without_ca_exits_77_and_says_init(tmp_path: Path) -> None:
    result = fedllm("client", "--dir", tmp_path, "--name", "gw-1")
    assert (result.returncode, "fedllm certs init" in result.stderr) == (77, True)


def test_bad_ip_is_a_usage_error(tmp_path: Path) -> None:
    result = fedllm("server", "--dir", tmp_path, "--name", "h", "--ip", "not-an-ip")
    assert result.returncode == 2


def test_revoking_unknown_client_exits_77(issued: Path) -> None:
    assert fedllm("revoke", "--dir", issued, "--name", "nobody").returncode == 77
