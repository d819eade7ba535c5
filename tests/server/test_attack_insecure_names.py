"""Issue 10, attack 12: in insecure mode (no mTLS) a peer names itself in Hello.

Spoofing: a second host claiming a connected client's name must be refused (`name_in_use`)
and leave the real client's session alone; before, it replaced it. Sybil names: one host may
hold at most `insecure_names_per_address` names (1 here), so it cannot make GSFS's quorum of
2 alone; before, every name was admitted. The attacker connects from 127.0.0.2 (loopback on
Linux). The daemon runs in-process on plain TCP; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fedserver_testkit import ScriptedClient, run_with_daemon, tiny_settings_dict

from fedllm_proto.connection import Connection, NeedData
from fedllm_proto.errors import ErrorCode
from fedllm_proto.messages import PROTOCOL_VERSIONS, Error, Hello, Welcome
from fedllm_proto.states import Role
from fedllm_server.daemon import Running
from fedllm_server.settings import ServerSettings

GSFS = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 3}  # K = 2
ATTACKER = "127.0.0.2"


def _with_daemon(tmp_path: Path, attack: Callable[[Running], Awaitable[Any]]) -> Any:
    cfg = tiny_settings_dict(tmp_path / "state", None, GSFS, insecure_names_per_address=1)
    settings = ServerSettings.model_validate(cfg)
    return run_with_daemon(settings, attack)


async def _hello_from(running: Running, name: str) -> Welcome | Error:
    """Connect from the attacker's address, say Hello as ``name``; the server's first answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", running.port, local_addr=(ATTACKER, 0)
    )
    conn = Connection(Role.CLIENT)
    hello = Hello(PROTOCOL_VERSIONS, running.state.fingerprint, (), 10, -1, name)
    writer.write(conn.send(hello, 0.0))
    for _ in range(100_000):  # bounded; the caller's timeout ends it long before
        event = conn.next_event()
        if isinstance(event, NeedData):
            data = await reader.read(1 << 16)
            if not data:
                break
            conn.receive_data(data, 0.0)
        elif isinstance(event, Welcome | Error):
            if isinstance(event, Error):
                writer.close()
            else:
                _HELD.append(writer)  # keep the admitted connection open
            return event
    raise AssertionError("connection ended before Welcome or Error")


_HELD: list[asyncio.StreamWriter] = []


def test_a_connected_name_cannot_be_taken_from_another_host(tmp_path: Path) -> None:
    async def attack(running: Running) -> tuple[Welcome | Error, bool]:
        honest = ScriptedClient("client-1", "127.0.0.1", running.port, None, "")
        honest.fingerprint = running.state.fingerprint
        await honest.connect()
        answer = await _hello_from(running, "client-1")
        session = running.state.sessions.get("client-1")
        still_honest = session is not None and session.peer.address.startswith("127.0.0.1:")
        await honest.close()
        return answer, still_honest

    answer, still_honest = _with_daemon(tmp_path, attack)
    assert isinstance(answer, Error) and answer.code is ErrorCode.UNAUTHORIZED
    assert answer.detail.startswith("name_in_use")
    assert still_honest


def test_one_host_cannot_hold_more_names_than_configured(tmp_path: Path) -> None:
    async def attack(running: Running) -> tuple[Welcome | Error, Welcome | Error, list[str]]:
        first = await _hello_from(running, "sybil-1")
        second = await _hello_from(running, "sybil-2")
        names = sorted(running.state.sessions)
        for writer in _HELD:
            writer.close()
        _HELD.clear()
        return first, second, names

    first, second, names = _with_daemon(tmp_path, attack)
    assert isinstance(first, Welcome)
    assert isinstance(second, Error) and second.detail.startswith("too_many_names")
    assert names == ["sybil-1"]  # one name: not the quorum of 2
