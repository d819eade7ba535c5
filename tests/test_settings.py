"""The shared settings loader: TOML + env overrides, errors that name the field."""

from pathlib import Path

import pytest
from pydantic import Field

from fedllm_core.errors import SettingsError
from fedllm_core.settings import FrozenSettings, env_overrides, load_settings


class Inner(FrozenSettings):
    q: float = Field(0.6, gt=0, le=1)


class Outer(FrozenSettings):
    name: str = "x"
    inner: Inner = Inner()


def test_env_override_reaches_nested_field(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('name = "file"\n[inner]\nq = 0.5\n')
    loaded = load_settings(Outer, cfg, env_prefix="T", environ={"T__INNER__Q": "0.9"})
    assert (loaded.name, loaded.inner.q) == ("file", 0.9)


def test_bad_value_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[inner]\nq = 7\n")
    with pytest.raises(SettingsError, match=r"inner\.q"):
        load_settings(Outer, cfg, env_prefix="T", environ={})


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[inner]\nq = 0.5\n")
    with pytest.raises(SettingsError, match=r"inner\.q from environment variable T__INNER__Q"):
        load_settings(Outer, cfg, env_prefix="T", environ={"T__INNER__Q": "7"})


def test_bad_file_value_names_no_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("[inner]\nq = 7\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(Outer, cfg, env_prefix="T", environ={"T__NAME": "y"})
    assert "environment variable" not in str(raised.value)


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("nmae = 'typo'\n")
    with pytest.raises(SettingsError, match="nmae"):
        load_settings(Outer, cfg, env_prefix="T", environ={})


def test_env_values_parse_as_toml_scalars() -> None:
    assert env_overrides("P", {"P__A": "3", "P__B": "hello", "P__C": "true"}) == {
        "a": 3,
        "b": "hello",
        "c": True,
    }
