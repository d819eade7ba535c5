"""The pure modules stay pure: the wire's sans-I/O core, the server's pool log, schedules, door
validation and strategies, and the client's trigger (issue 9).

Two checks per group. In a fresh interpreter (so other tests' imports cannot hide a violation)
importing the group must not load asyncio, ssl or torch, even through another module. And the
group's own sources must not import a socket, the event loop, TLS, torch or a clock (time is an
argument), plus what the group's rule adds: no logging in schedules, validation, strategies and
the trigger; no numpy in the tensor-free schedules and the trigger (strategies may use numpy).
The socket rule is on sources only for groups that load pydantic: its email support imports
socket (stdlib), which opens nothing.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SANS_IO = [
    "fedllm_proto.errors",
    "fedllm_proto.limits",
    "fedllm_proto.frames",
    "fedllm_proto.encodings",
    "fedllm_proto.codec",
    "fedllm_proto.messages",
    "fedllm_proto.wire",
    "fedllm_proto.reader",
    "fedllm_proto.states",
    "fedllm_proto.connection",
    "fedllm_proto.timeouts",
    "fedllm_proto.testing",
]
FORBIDDEN = ["asyncio", "ssl", "socket", "torch"]  # never loaded by the sans-I/O core
LOADED_NEVER = ["asyncio", "ssl", "torch"]  # never loaded by any pure group
NO_IO = frozenset({"asyncio", "ssl", "socket", "torch", "time", "datetime"})
NO_LOGS = frozenset({"logging", "structlog"})
NO_TENSORS = frozenset({"numpy", "torch"})


def _package(name: str) -> list[str]:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return [name] + [
        f"{name}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)
    ]


@dataclass(frozen=True)
class Group:
    modules: list[str]
    loaded_never: list[str]  # checked in sys.modules after importing the group
    sources_never: frozenset[str]  # checked on the group's own import statements


GROUPS = {
    "proto sans-I/O": Group(SANS_IO, FORBIDDEN, NO_IO),
    "server pool log": Group(["fedllm_server.durable.poollog"], LOADED_NEVER, NO_IO),
    "server schedules": Group(
        _package("fedllm_server.schedule"), LOADED_NEVER, NO_IO | NO_LOGS | NO_TENSORS
    ),
    "server validation": Group(
        ["fedllm_server.validation", "fedllm_server.accepted", "fedllm_server.tensors"],
        LOADED_NEVER,
        NO_IO | NO_LOGS,
    ),
    "server strategies": Group(_package("fedllm_server.strategies"), LOADED_NEVER, NO_IO | NO_LOGS),
    "client trigger": Group(["fedllm_client.trigger"], LOADED_NEVER, NO_IO | NO_LOGS | NO_TENSORS),
    "client compression": Group(["fedllm_client.compression"], LOADED_NEVER, NO_IO | NO_LOGS),
}
PROBE = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in {forbidden!r} if m in sys.modules)))
"""


def _loaded(modules: list[str], forbidden: list[str]) -> list[str]:
    probe = PROBE.format(modules=modules, forbidden=forbidden)
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[0])
    return loaded


def _source_imports(module: str) -> set[str]:
    """Top-level names of what ``module``'s own source imports (anywhere in the file)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    names = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("group", GROUPS, ids=list(GROUPS))
def test_pure_group_loads_no_event_loop_tls_or_torch(group: str) -> None:
    rule = GROUPS[group]
    assert _loaded(rule.modules, rule.loaded_never) == []


@pytest.mark.parametrize("group", GROUPS, ids=list(GROUPS))
def test_pure_group_sources_import_no_socket_loop_clock_or_forbidden_library(group: str) -> None:
    rule = GROUPS[group]
    offenders = [(m, sorted(_source_imports(m) & rule.sources_never)) for m in rule.modules]
    assert [o for o in offenders if o[1]] == []


def test_sans_io_modules_import_no_io_or_clock_or_torch() -> None:
    assert _loaded(SANS_IO, FORBIDDEN) == []


def test_the_probe_would_notice_a_forbidden_import() -> None:
    extra = "import ssl\n" + PROBE.format(modules=[], forbidden=FORBIDDEN)
    assert "ssl" in json.loads(
        subprocess.run(
            [sys.executable, "-c", extra], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    )


def test_the_source_check_would_notice_a_clock_or_a_lazy_torch(tmp_path: Path) -> None:
    (tmp_path / "impure_probe.py").write_text(
        "from time import monotonic\n\ndef late():\n    import torch.nn\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        assert _source_imports("impure_probe") >= {"time", "torch"}
    finally:
        sys.path.remove(str(tmp_path))


def test_every_group_names_real_modules() -> None:
    for group, rule in GROUPS.items():
        missing = [m for m in rule.modules if importlib.util.find_spec(m) is None]
        assert missing == [], group
    assert "fedllm_server.schedule.gsfs" in GROUPS["server schedules"].modules
    assert "fedllm_server.strategies.fedopt" in GROUPS["server strategies"].modules
