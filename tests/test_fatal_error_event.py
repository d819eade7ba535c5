"""A daemon that cannot start says so once more as one JSON ``fatal_error`` event (issue 11).

What a log shipper reads is the structured log, not the stderr line: both daemons' console
scripts, in their own processes, with stderr a pipe (JSON lines, as under systemd). A bad
settings file fails before the settings could configure logging, so the defaults must; a
client whose TLS files are missing fails after they did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SAFETY_S = 180  # a net against a process that never ends, not a timing assertion


def _run(module: str, config: Path, **env: str) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, "-m", module, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=SAFETY_S,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("FEDLLM_")}, **env},
    )
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return done.returncode, [e for e in events if e.get("event") == "fatal_error"]


def test_a_bad_server_setting_is_one_fatal_event(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('insecure = true\nport = "x"\n')
    code, (fatal,) = _run("fedllm_server.cli", config)
    assert (code, fatal["exit_code"], fatal["component"]) == (78, 78, "server")
    assert "port" in fatal["error"]


def test_a_bad_server_environment_variable_is_named_in_the_event(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("insecure = true\n")
    code, (fatal,) = _run("fedllm_server.cli", config, FEDLLM_SERVER__PORT="70000")
    assert code == 78 and "FEDLLM_SERVER__PORT" in fatal["error"]


def test_a_server_settings_file_that_is_not_toml_is_one_fatal_event(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("port = = 1\n")
    code, (fatal,) = _run("fedllm_server.cli", config)
    assert (code, fatal["exit_code"]) == (78, 78) and "not valid TOML" in fatal["error"]


def test_a_bad_client_setting_is_one_fatal_event(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text("insecure = true\nmax_total_steps = 0\n")
    code, (fatal,) = _run("fedllm_client.cli", config)
    assert (code, fatal["exit_code"], fatal["component"]) == (78, 78, "client")
    assert "max_total_steps" in fatal["error"]


def test_a_client_without_its_tls_files_is_one_fatal_event(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[tls]\n"
        f'ca = "{tmp_path / "ca.crt"}"\n'
        f'cert = "{tmp_path / "c.crt"}"\n'
        f'key = "{tmp_path / "c.key"}"\n'
    )
    code, (fatal,) = _run("fedllm_client.cli", config)
    assert (code, fatal["exit_code"]) == (77, 77) and "ca.crt" in fatal["error"]
