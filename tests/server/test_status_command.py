"""`fedllm status` against a real server process: summary, --json, and exit 69 once it is gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedserver_testkit import ServerProcess, tiny_settings_dict, to_toml


def _status(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fedllm_core.cli", "status", "--port", str(port), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_status_reads_the_running_server_then_says_it_is_gone(tmp_path: Path) -> None:
    cfg = tiny_settings_dict(
        tmp_path / "state", None, {"name": "fedavg"}, metrics={"enabled": True, "port": 0}
    )
    config = tmp_path / "server.toml"
    config.write_text(to_toml(cfg))
    server = ServerProcess(config)
    port = int(server.wait_event("metrics_endpoint_listening")["port"])
    server.wait_event("server_listening")

    readable = _status(port)
    as_json = _status(port, "--json")
    assert server.stop() == 0
    gone = _status(port)

    assert readable.returncode == 0, readable.stderr
    assert "version 0, strategy fedavg" in readable.stdout
    assert "clients: 0 connected" in readable.stdout
    document = json.loads(as_json.stdout)
    assert (document["version"], document["strategy"], document["clients"]) == (0, "fedavg", [])
    assert gone.returncode == 69
    assert "no server status" in gone.stderr and "[metrics]" in gone.stderr
