"""Issue 10, attack 13: the state directory under stress.

A second server on the same state_dir must refuse to start (exit 75) instead of interleaving
its writes with the first; every state file is 0600 whatever the umask; a checkpoint write
that fails (here: the checkpoints directory replaced by a plain file while serving) is
retried, reported, and never ends the server. Real processes, files and sockets; every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedserver_testkit import ScriptedClient, ServerProcess, tiny_settings_dict, to_toml

from fedllm_server.daemon import Running, start
from fedllm_server.evaluation import CentralModel
from fedllm_server.metrics_log import read_metrics
from fedllm_server.settings import ServerSettings

GSFS = {"name": "gsfs", "federation_size_source": "explicit", "federation_size": 3}  # K = 2
FAST_RETRY = {"attempts": 2, "first_delay_s": 0.05, "max_delay_s": 0.2}
_SERVING: set[asyncio.Task[None]] = set()  # the clients' receive loops (end with the server)


def _settings(tmp_path: Path) -> ServerSettings:
    cfg = tiny_settings_dict(tmp_path / "state", None, GSFS, checkpoint_retry=FAST_RETRY)
    return ServerSettings.model_validate(cfg)


def _run_daemon(settings: ServerSettings, body: Callable[[Running], Awaitable[Any]]) -> int:
    """Start the daemon in-process, run `body`, stop it; returns the daemon's exit code."""

    async def run() -> int:
        running = await start(settings, CentralModel(settings), install_signals=False)
        try:
            async with asyncio.timeout(60):
                await body(running)
        finally:
            running.state.request_stop("test done")
        return await asyncio.wait_for(running.wait(), 60)

    return asyncio.run(run())


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(6000):  # bounded; the caller's timeout ends it long before
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def _joined(running: Running, name: str) -> ScriptedClient:
    client = ScriptedClient(name, "127.0.0.1", running.port, None, running.state.fingerprint)
    await client.connect()
    task = asyncio.create_task(client.serve())
    _SERVING.add(task)
    task.add_done_callback(_SERVING.discard)
    await _until(lambda: client.version >= 0, f"{name} has the global model")
    return client


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_second_server_on_the_same_state_dir_exits_75(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(to_toml(tiny_settings_dict(tmp_path / "state", None, GSFS)))
    first = ServerProcess(config)
    first.wait_event("server_listening")
    second = ServerProcess(config)
    code = second.proc.wait(180)
    said = " ".join(e.get("line", "") for e in second.events if e.get("event") == "_raw")
    assert (code, "in use by another fedllm server" in said) == (75, True)
    assert first.stop() == 0


def test_state_files_are_0600_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    settings = _settings(tmp_path)

    async def one_aggregation(running: Running) -> None:
        clients = [await _joined(running, f"client-{i}") for i in (1, 2)]
        for client in clients:
            await client.upload()
        await _until(lambda: all(c.version >= 1 for c in clients), "version 1 published")
        for client in clients:
            await client.close()

    _run_daemon(settings, one_aggregation)
    modes = {
        str(p.relative_to(settings.state_dir)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in settings.state_dir.rglob("*")
        if p.is_file()
    }
    assert {"pool.log", "metrics.jsonl", "lock", "checkpoints/checkpoint-00000001.json"} <= set(
        modes
    )
    assert set(modes.values()) == {"0o600"}, modes


def test_a_failing_checkpoint_write_is_retried_and_serving_goes_on(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    checkpoints = settings.state_dir / "checkpoints"
    away = settings.state_dir / "checkpoints.away"
    served: list[int] = []

    async def break_the_disk(running: Running) -> None:
        checkpoints.rename(away)
        checkpoints.write_bytes(b"")  # every write under checkpoints/ now fails (ENOTDIR)
        clients = [await _joined(running, f"client-{i}") for i in (1, 2)]
        for client in clients:
            await client.upload()
        await _until(lambda: all(c.version >= 1 for c in clients), "version 1 published")
        served.extend(c.version for c in clients)
        checkpoints.unlink()
        away.rename(checkpoints)  # the disk is back: the daemon's retry saves version 1
        await _until(lambda: (checkpoints / "checkpoint-00000001.json").exists(), "saved")
        for client in clients:
            await client.close()

    code = _run_daemon(settings, break_the_disk)
    records = read_metrics(settings.metrics_path)
    aggregation = next(r for r in records if r["kind"] == "aggregation")
    reported = (aggregation["durable"], aggregation["checkpoint_failures"] >= 2)
    assert (code, served, reported) == (0, [1, 1], (False, True))
