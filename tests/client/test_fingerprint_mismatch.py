"""A client whose settings differ from the server's is told which part of the fingerprint
differs (real daemons over mutual TLS; the client exits 78 instead of retrying)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import TINY_DATA, TINY_MODEL
from .federation import GSFS_OF_THREE, Federation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def fed(tmp_path: Path, pki: Any) -> Iterator[Federation]:
    federation = Federation(tmp_path, pki.federation, GSFS_OF_THREE)
    yield federation
    federation.stop_all()


def _events(fed: Federation, name: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in (fed.root / f"{name}.log").read_text().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            out.append(json.loads(line))
    return out


def test_the_refusal_names_the_parts_that_differ(fed: Federation) -> None:
    fed.start_server()
    other_lora = {**TINY_MODEL, "lora_r": 2}
    other_template = {**TINY_DATA, "num_partitions": 3, "template": "compact@1"}
    fed.start_client(
        "client-1", 0, backoff={"max_attempts": 0}, model=other_lora, data=other_template
    )
    assert fed.wait("client-1") == 78
    (mismatch,) = _events(fed, "server", "client_fingerprint_mismatch")
    assert mismatch["differing"] == ["lora", "template"]  # labels and base model agree
    client_log = (fed.root / "client-1.log").read_text()
    assert "model fingerprint differs in lora: [model] lora_r" in client_log
    assert "; template: [data] template" in client_log
