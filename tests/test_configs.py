"""The shipped example configs: they list every settings key, and they load as valid settings.

configs/server.toml and configs/client.toml promise operators "every setting is shown", so
a key added to a settings model without a line in its example file (a commented
``# key = default`` line counts) fails here. The walk follows nested sections, optional
sections and the ``[strategy]`` union (each strategy's keys). The quick-start configs, which
the README tells operators to run as they are, must load too.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from fedllm_client.settings import ENV_PREFIX as CLIENT_ENV
from fedllm_client.settings import ClientSettings
from fedllm_core.settings import load_settings
from fedllm_server.settings import ENV_PREFIX as SERVER_ENV
from fedllm_server.settings import ServerSettings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXAMPLES = {"server.toml": ServerSettings, "client.toml": ClientSettings}
# `[a.b]` or `# [a.b]` (a trailing comment allowed), and `key =` or `# key =`
TABLE = re.compile(r"^\s*#?\s*\[([A-Za-z0-9_.]+)\]\s*(#.*)?$")
KEY = re.compile(r"^\s*#?\s*([a-z_][a-z0-9_.]*)\s*=")


def sections(annotation: Any) -> list[type[BaseModel]]:
    """The settings models a field's annotation holds (unions and Optional included)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return sections(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in sections(arg)]
    return []


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted settings key of ``model``: leaves, and the keys of nested sections."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        nested = sections(info.annotation)
        if not nested:
            keys.add(prefix + name)
        for section in nested:
            keys |= model_keys(section, f"{prefix}{name}.")
    return keys


def listed_keys(text: str) -> set[str]:
    """Dotted keys an example TOML shows, set or commented out."""
    keys: set[str] = set()
    table = ""
    for line in text.splitlines():
        if header := TABLE.match(line):
            table = header.group(1) + "."
        elif key := KEY.match(line):
            keys.add(table + key.group(1))
    return keys


def test_the_walk_sees_nested_sections_and_every_strategy() -> None:
    keys = model_keys(ServerSettings)
    assert {"tls.ca", "strategy.variant", "strategy.quorum_fraction", "rounds.min_clients"} <= keys


def test_the_scan_reads_commented_keys_inside_their_table() -> None:
    text = "a = 1\n[tls]\n# ca = 'x'   # comment\n# [data]\n# paths = []\n"
    assert listed_keys(text) == {"a", "tls.ca", "data.paths"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_lists_every_settings_key(name: str) -> None:
    missing = model_keys(EXAMPLES[name]) - listed_keys((CONFIGS / name).read_text())
    assert not missing, f"configs/{name} does not list: {', '.join(sorted(missing))}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_lists_no_key_the_settings_lack(name: str) -> None:
    unknown = listed_keys((CONFIGS / name).read_text()) - model_keys(EXAMPLES[name])
    assert not unknown, f"configs/{name} lists keys no setting has: {', '.join(sorted(unknown))}"


def test_server_example_loads() -> None:
    settings = load_settings(
        ServerSettings, CONFIGS / "server.toml", env_prefix=SERVER_ENV, environ={}
    )
    assert settings.port == 8443


def test_client_example_loads() -> None:
    settings = load_settings(
        ClientSettings, CONFIGS / "client.toml", env_prefix=CLIENT_ENV, environ={}
    )
    assert settings.server.port == 8443


def _quickstart() -> tuple[ServerSettings, list[ClientSettings]]:
    quick = CONFIGS / "quickstart"
    server = load_settings(ServerSettings, quick / "server.toml", env_prefix=SERVER_ENV, environ={})
    clients = [
        load_settings(ClientSettings, path, env_prefix=CLIENT_ENV, environ={})
        for path in sorted(quick.glob("client-*.toml"))
    ]
    return server, clients


def test_quickstart_federation_stops_on_its_own_with_every_client_in_each_round() -> None:
    server, clients = _quickstart()
    assert (server.stop_after_versions, server.rounds.min_clients) == (3, len(clients))


def test_quickstart_clients_share_the_servers_data_and_model_but_not_a_partition() -> None:
    server, clients = _quickstart()
    shared = [(c.data.model_copy(update={"partition_index": 0}), c.model) for c in clients]
    indices = sorted(c.data.partition_index for c in clients)
    assert (shared, indices) == ([(server.data, server.model)] * 3, list(range(len(clients))))


def test_quickstart_client_budget_covers_every_round() -> None:
    server, clients = _quickstart()
    rounds = server.stop_after_versions or 0
    assert {c.max_total_steps for c in clients} == {rounds * server.rounds.local_steps}
