"""Client daemons (in-process) against a scripted server on the real mutual-TLS transport:
GSFS uploads and broadcasts, FedAvg rounds, reconnect with backoff after the server vanishes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fedllm_client.daemon import ClientDaemon
from fedllm_client.metrics_log import read_metrics
from fedllm_client.refusal import Refused
from fedllm_client.server_link import HandshakeRefused
from fedllm_client.settings import ClientSettings
from fedllm_core.model import build_model, trainable_state
from fedllm_proto.errors import ErrorCode
from fedllm_proto.messages import ByeCode, Error

from .conftest import tiny_settings
from .scripted import Scripted

pytestmark = pytest.mark.timeout(240)


def _initial_theta(settings: ClientSettings) -> dict[str, Any]:
    from fedllm_core.data import load_client_data

    labels = load_client_data(settings.data).label_names
    return trainable_state(build_model(settings.model, labels, seed=123).model)


def _client(pki: Any, tmp: Path, name: str, index: int, port: int, **extra: Any) -> ClientSettings:
    fed = pki.federation
    return tiny_settings(
        tmp / name,
        insecure=False,
        client_name=name,
        server={"port": port},
        tls={"ca": fed.ca_cert, "cert": fed.clients[name].cert, "key": fed.clients[name].key},
        data={"partition_index": index},
        backoff={"initial_s": 0.05, "max_s": 0.2},
        **extra,
    )


def _events(settings: ClientSettings, name: str) -> list[dict[str, Any]]:
    return [r for r in read_metrics(settings.metrics_path) if r["kind"] == name]


async def _run_federation(server: Scripted, clients: list[ClientSettings]) -> list[int]:
    return list(await asyncio.gather(*(ClientDaemon(c).run() for c in clients)))


GSFS_TRIGGER = {"warmup_steps": 5, "check_every": 5, "min_steps_between_uploads": 5}


def test_gsfs_clients_upload_on_triggers_and_apply_every_broadcast(
    pki: Any, tmp_path: Path
) -> None:
    async def main() -> tuple[Scripted, list[ClientSettings], list[int]]:
        probe = tiny_settings(tmp_path / "probe")
        server = Scripted("gsfs", _initial_theta(probe), quorum=2, stop_after=3)
        port = await server.start(pki.server_context())
        clients = [
            _client(
                pki, tmp_path, f"client-{i + 1}", i, port, trigger=GSFS_TRIGGER, max_total_steps=200
            )
            for i in range(2)
        ]
        return server, clients, await _run_federation(server, clients)

    server, clients, codes = asyncio.run(main())
    assert codes == [0, 0]
    for c in clients:
        applied = [r["version"] for r in _events(c, "broadcast_applied")]
        assert applied == list(range(server.version + 1))
    triggers = {u.trigger.value for _, u in server.updates}
    assert triggers <= {"performance", "gradient_norm", "max_silence"}
    # Every upload is logged once, and the server received a prefix of each client's uploads:
    # an upload sent while the server's Bye is on its way crosses it and is never read (the
    # scripted server stops reading at its last version), so only a tail may be missing.
    received = {u.update_id for _, u in server.updates}
    for c in clients:
        sent = [r["update_id"] for r in _events(c, "upload")]
        assert len(sent) == len(set(sent))
        arrived = [i in received for i in sent]
        assert arrived[0] and arrived == sorted(arrived, reverse=True)
    assert received <= {r["update_id"] for c in clients for r in _events(c, "upload")}


def test_fedavg_clients_answer_every_round_with_local_steps(pki: Any, tmp_path: Path) -> None:
    async def main() -> tuple[Scripted, list[ClientSettings], list[int]]:
        server = Scripted("fedavg", _initial_theta(tiny_settings(tmp_path / "p")), stop_after=3)
        port = await server.start(pki.server_context())
        clients = [_client(pki, tmp_path, f"client-{i + 1}", i, port) for i in range(2)]
        return server, clients, await _run_federation(server, clients)

    server, _clients, codes = asyncio.run(main())
    rounds = sorted((cid, u.round, u.trigger.value) for cid, u in server.updates)
    expected = sorted((f"client-{i}", r, "round") for i in (1, 2) for r in range(3))
    assert (codes, rounds) == ([0, 0], expected)


def test_fedavg_local_steps_are_counted_against_the_budget(pki: Any, tmp_path: Path) -> None:
    async def main() -> list[ClientSettings]:
        server = Scripted("fedavg", _initial_theta(tiny_settings(tmp_path / "p")), stop_after=2)
        port = await server.start(pki.server_context())
        clients = [_client(pki, tmp_path, f"client-{i + 1}", i, port) for i in range(2)]
        await _run_federation(server, clients)
        return clients

    clients = asyncio.run(main())
    stops = [_events(c, "stop")[-1]["steps_used"] for c in clients]
    assert stops == [2 * 5, 2 * 5]


def test_client_reconnects_with_backoff_when_the_server_comes_back(
    pki: Any, tmp_path: Path
) -> None:
    async def main() -> tuple[list[Any], int]:
        theta = _initial_theta(tiny_settings(tmp_path / "p"))
        first = Scripted("gsfs", theta, quorum=99)
        port = await first.start(pki.server_context())
        client = _client(pki, tmp_path, "client-1", 0, port, max_total_steps=30)
        daemon = asyncio.create_task(ClientDaemon(client).run())
        while not first.hellos:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await first.stop_listening()  # the server vanishes (no Bye)
        await asyncio.sleep(0.5)  # the client fails to connect a few times meanwhile
        second = Scripted("gsfs", theta, bye_after_hello=True)
        await second.start(pki.server_context(), port=port)
        code = await asyncio.wait_for(daemon, timeout=120)
        return first.hellos + second.hellos, code

    hellos, code = asyncio.run(main())
    assert (code, len(hellos) >= 2, hellos[-1].last_global_version) == (0, True, 0)


def test_bye_restarting_reconnects_and_only_bye_finished_ends_the_client(
    pki: Any, tmp_path: Path
) -> None:
    async def main() -> tuple[Scripted, int]:
        theta = _initial_theta(tiny_settings(tmp_path / "p"))
        restarting = [ByeCode.RESTARTING, ByeCode.UNSPECIFIED, ByeCode.FINISHED]
        server = Scripted("gsfs", theta, bye_after_hello=True, byes=restarting)
        port = await server.start(pki.server_context())
        client = _client(pki, tmp_path, "client-1", 0, port, max_total_steps=30)
        return server, await asyncio.wait_for(ClientDaemon(client).run(), timeout=120)

    server, code = asyncio.run(main())
    assert (code, len(server.hellos)) == (0, 3)


def test_bye_revoked_exits_78_with_a_refusal_recorded(pki: Any, tmp_path: Path) -> None:
    made: list[ClientSettings] = []

    async def main() -> None:
        theta = _initial_theta(tiny_settings(tmp_path / "p"))
        server = Scripted("gsfs", theta, bye_after_hello=True, byes=[ByeCode.REVOKED])
        port = await server.start(pki.server_context())
        made.append(_client(pki, tmp_path, "client-1", 0, port, max_total_steps=30))
        await asyncio.wait_for(ClientDaemon(made[0]).run(), timeout=120)

    with pytest.raises(Refused) as refused:
        asyncio.run(main())
    stops = [r["reason"] for r in _events(made[0], "stop")]
    assert (refused.value.exit_code, refused.value.why, stops) == (78, "bye_revoked", ["refused"])


def test_an_unauthorized_error_at_the_handshake_exits_78_instead_of_retrying(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        refusal = Error(ErrorCode.UNAUTHORIZED, "certificate revoked")
        server = Scripted("gsfs", {}, refuse_with=refusal)
        port = await server.start(None)
        client = tiny_settings(tmp_path / "c", server={"port": port})
        await asyncio.wait_for(ClientDaemon(client).run(), timeout=120)

    with pytest.raises(Refused) as refused:
        asyncio.run(main())
    assert (refused.value.exit_code, refused.value.why) == (78, "unauthorized")


def test_a_bye_finished_instead_of_welcome_ends_the_client(tmp_path: Path) -> None:
    """A client that connects while the federation is finishing is told so at the door."""

    async def main() -> tuple[Scripted, int]:
        server = Scripted("gsfs", {}, refuse_with=ByeCode.FINISHED)
        port = await server.start(None)
        client = tiny_settings(tmp_path / "c", server={"port": port})
        return server, await asyncio.wait_for(ClientDaemon(client).run(), timeout=120)

    server, code = asyncio.run(main())
    assert (code, len(server.hellos)) == (0, 1)


def test_insecure_mode_names_itself_in_hello_over_plain_tcp(tmp_path: Path) -> None:
    async def main() -> tuple[Scripted, int]:
        server = Scripted(
            "gsfs", _initial_theta(tiny_settings(tmp_path / "p")), bye_after_hello=True
        )
        port = await server.start(None)
        client = tiny_settings(tmp_path / "c", client_name="edge-9", server={"port": port})
        return server, await ClientDaemon(client).run()

    server, code = asyncio.run(main())
    assert (code, [h.client_name for h in server.hellos]) == (0, ["edge-9"])


def test_lossy_upload_encoding_reaches_the_server_decoded(pki: Any, tmp_path: Path) -> None:
    async def main() -> Scripted:
        server = Scripted("fedavg", _initial_theta(tiny_settings(tmp_path / "p")), quorum=1)
        server.stop_after = 1
        port = await server.start(pki.server_context())
        client = _client(pki, tmp_path, "client-1", 0, port, upload={"encoding": "int8"})
        await ClientDaemon(client).run()
        return server

    server = asyncio.run(main())
    update = server.updates[0][1]
    assert (update.encoding.value, {a.dtype.name for a in update.tensors.values()}) == (
        "int8",
        {"float32"},
    )


def test_adaptive_upload_picks_a_lossy_encoding_within_its_budget(pki: Any, tmp_path: Path) -> None:
    async def main() -> tuple[Scripted, ClientSettings]:
        server = Scripted("fedavg", _initial_theta(tiny_settings(tmp_path / "p")), quorum=1)
        server.stop_after = 1
        port = await server.start(pki.server_context())
        upload = {"encoding": "adaptive", "error_budget": 0.05}
        client = _client(pki, tmp_path, "client-1", 0, port, upload=upload)
        await ClientDaemon(client).run()
        return server, client

    server, client = asyncio.run(main())
    update = server.updates[0][1]
    assert update.encoding.value in ("fp16", "int8", "topk")  # a tiny LoRA delta is dense
    records = [json.loads(line) for line in client.metrics_path.read_text().splitlines()]
    (sent,) = [r for r in records if r["kind"] == "upload"]
    assert sent["encoding"] == update.encoding.value
    assert 0 < sent["encoding_error"] <= 0.05 and sent["encoding_reason"] == "budget"
    assert sent["bytes"] < sent["raw_bytes"]


def test_unknown_strategy_is_refused_not_retried(tmp_path: Path) -> None:
    async def main() -> None:
        server = Scripted("fedprox", {})
        port = await server.start(None)
        await ClientDaemon(tiny_settings(tmp_path / "c", server={"port": port})).run()

    with pytest.raises(HandshakeRefused) as refused:
        asyncio.run(main())
    assert refused.value.exit_code == 78


def test_heartbeats_flow_while_a_long_training_chunk_runs(tmp_path: Path) -> None:
    """Chunks of 3 s of "training" against a server that drops a peer silent for 2 s."""

    async def main() -> tuple[Scripted, int, ClientSettings]:
        server = Scripted("gsfs", _initial_theta(tiny_settings(tmp_path / "p")), quorum=1)
        server.stop_after = 1
        port = await server.start(None, idle_s=2.0)
        client = tiny_settings(
            tmp_path / "c",
            server={"port": port},
            trainer="synthetic",
            synthetic={"step_time_s": 0.3},
            steps_per_chunk=10,
            trigger={"check_every": 10, "min_steps_between_uploads": 10, "max_silence_steps": 20},
        )
        return server, await ClientDaemon(client).run(), client

    server, code, client = asyncio.run(main())
    assert (code, len(server.hellos), len(_events(client, "connected"))) == (0, 1, 1)
