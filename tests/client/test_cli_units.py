"""The shipped systemd units call the console scripts with options those scripts accept, and
name only exit codes the daemons really use (a renamed flag would make a unit fail at boot)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from fedllm_client import cli as client_cli
from fedllm_core.errors import ExitCode
from fedllm_server import cli as server_cli

UNITS = Path(__file__).resolve().parents[2] / "systemd"
PARSERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "fedllm-client": client_cli.add_arguments,
    "fedllm-server": server_cli.add_arguments,
}


def _directives(unit: Path) -> dict[str, str]:
    """Key=value lines of a unit file, with backslash continuations joined."""
    text = unit.read_text().replace("\\\n", " ")
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.startswith("#")}


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_exec_start_parses_with_the_scripts_own_parser(unit: Path) -> None:
    program, *args = shlex.split(_directives(unit)["ExecStart"])
    name = Path(program).name
    parser = argparse.ArgumentParser(prog=name, exit_on_error=False)
    PARSERS[name](parser)
    assert parser.parse_args(args).config == Path(f"/etc/fedllm/{name.split('-')[1]}.toml")


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_restart_prevent_exit_status_names_real_exit_codes(unit: Path) -> None:
    codes = {int(c) for c in _directives(unit)["RestartPreventExitStatus"].split()}
    assert codes <= {int(c) for c in ExitCode} and codes


def test_classify_unit_follows_zeek_and_writes_alerts_only() -> None:
    _, *args = shlex.split(_directives(UNITS / "fedllm-classify.service")["ExecStart"])
    parser = argparse.ArgumentParser(prog="fedllm-client")
    client_cli.add_arguments(parser)
    got = parser.parse_args(args)
    assert (got.mode, got.follow, got.alerts_only, got.output is not None) == (
        "classify",
        True,
        True,
        True,
    )
