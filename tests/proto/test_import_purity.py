"""The sans-I/O modules must not pull in asyncio, ssl, socket or torch (checked in a fresh
interpreter, so other tests' imports cannot hide a violation), nor read a clock."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

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
    "fedllm_proto.testing",
]
FORBIDDEN = ["asyncio", "ssl", "socket", "torch"]
PROBE = f"""
import importlib, json, sys
for name in {SANS_IO!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))
"""


def test_sans_io_modules_import_no_io_or_clock_or_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_probe_would_notice_a_forbidden_import() -> None:
    probe = PROBE.replace(
        "importlib.import_module(name)", "importlib.import_module(name)\nimport ssl"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "ssl" in json.loads(out.stdout.strip().splitlines()[-1])


def test_sans_io_sources_never_import_a_clock() -> None:
    # numpy itself imports `time`, so this rule is checked on our sources, not sys.modules.
    clocks = {"time", "datetime"}
    offenders = []
    for name in SANS_IO:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        tree = ast.parse(Path(spec.origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offenders += [(name, a.name) for a in node.names if a.name in clocks]
            elif isinstance(node, ast.ImportFrom) and node.module in clocks:
                offenders.append((name, node.module))
    assert offenders == []
