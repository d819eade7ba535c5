"""Settings shared by both daemons: TOML file + environment overrides -> frozen pydantic model.

Rules: every daemon has exactly one frozen settings model (``extra="forbid"`` so a typo is an
error, not a silently ignored key). Environment variables override the file:
``<PREFIX>__SECTION__FIELD=value`` (double underscore separates nesting levels; values are parsed
as TOML scalars when they can be, else taken as strings). A bad setting raises ``SettingsError``
whose message names every offending field by its dotted path.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fedllm_core.errors import SettingsError

M = TypeVar("M", bound=BaseModel)


class FrozenSettings(BaseModel):
    """Base for every settings section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Collect ``PREFIX__A__B=v`` variables into a nested dict ``{"a": {"b": v}}``."""
    environ = os.environ if environ is None else environ
    lead = prefix.upper() + "__"
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(lead):
            continue
        path = [part.lower() for part in key[len(lead) :].split("__") if part]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(raw)
    return tree


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``top`` laid over it, merging nested tables."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"settings file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc


def env_variable_names(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Dotted setting path -> the environment variable that set it (for error messages)."""
    environ = os.environ if environ is None else environ
    lead = prefix.upper() + "__"
    names: dict[str, str] = {}
    for key in environ:
        if key.startswith(lead):
            path = [part.lower() for part in key[len(lead) :].split("__") if part]
            names[".".join(path)] = key
    return names


def describe_validation_error(
    exc: ValidationError, env_names: Mapping[str, str] | None = None
) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        variable = (env_names or {}).get(where)
        # an operator must fix the variable, not the file, when the bad value came from it
        origin = f" from environment variable {variable}" if variable else ""
        lines.append(f"{where}{origin}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def load_settings(
    model: type[M],
    path: Path | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Build ``model`` from an optional TOML file, then env overrides, then explicit overrides."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    data = deep_merge(data, env_overrides(env_prefix, environ))
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        source = str(path) if path is not None else "settings"
        detail = describe_validation_error(exc, env_variable_names(env_prefix, environ))
        raise SettingsError(f"{source}: {detail}") from exc
