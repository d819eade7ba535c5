"""Server settings: the shipped example loads, env overrides apply, bad values exit 78."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm_core.errors import SettingsError
from fedllm_core.settings import load_settings
from fedllm_server.cli import main
from fedllm_server.settings import ENV_PREFIX, ServerSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "server.toml"


def test_example_config_is_valid() -> None:
    settings = load_settings(ServerSettings, EXAMPLE, env_prefix=ENV_PREFIX, environ={})
    assert (settings.strategy.name, settings.port) == ("fedavg", 8443)


def test_env_selects_gsfs_strategy() -> None:
    env = {"FEDLLM_SERVER__STRATEGY__NAME": "gsfs", "FEDLLM_SERVER__INSECURE": "true"}
    settings = load_settings(ServerSettings, None, env_prefix=ENV_PREFIX, environ=env)
    assert settings.strategy.name == "gsfs"


def test_missing_tls_files_are_a_settings_error() -> None:
    with pytest.raises(SettingsError, match=r"tls\.ca"):
        load_settings(ServerSettings, None, env_prefix=ENV_PREFIX, environ={})


def test_bad_value_exits_78_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text("insecure = true\n[rounds]\nmin_clients = 0\n")
    code = main(["--config", str(cfg)])
    assert (code, "rounds.min_clients" in capsys.readouterr().err) == (78, True)
