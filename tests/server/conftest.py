"""Server-test fixtures: the test kit on sys.path; no server process outlives its test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fedserver_testkit (importlib import mode)

from fedserver_testkit import ServerProcess  # importable thanks to the path above


@pytest.fixture(autouse=True)
def _reap_server_processes() -> Iterator[None]:
    yield
    while ServerProcess.started:
        server = ServerProcess.started.pop()
        if server.proc.poll() is None:  # a failed test left it running: SIGKILL, then reap
            server.proc.kill()
            server.proc.wait(30)
