"""Client settings: the example config loads, env overrides, bad values exit 78 naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedllm_client.settings import load_client_settings
from fedllm_core.errors import SettingsError

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "client.toml"


def test_example_config_loads() -> None:
    settings = load_client_settings(EXAMPLE)
    assert settings.tls.ca is not None


def test_env_override_reaches_nested_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLLM_CLIENT__TRIGGER__CHECK_EVERY", "7")
    assert load_client_settings(EXAMPLE).trigger.check_every == 7


def test_tls_required_unless_insecure(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nport = 9000\n")
    with pytest.raises(SettingsError, match=r"tls\.ca"):
        load_client_settings(cfg)


def test_bad_setting_exits_78_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("insecure = true\nmax_total_steps = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedllm_client.cli", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, "max_total_steps" in proc.stderr) == (78, True)
