"""Test kit for the server tests: tiny settings and a scripted protocol client.

The scripted client is a real peer over the real transport (TLS when given a context): it
sends Hello, receives Welcome and every GlobalModel, answers TrainRequests with real deltas
(small seeded random arrays with the global model's names and shapes) or, in GSFS mode, uploads
on its own schedule. Faults are explicit knobs (NaNs, wrong shapes, replays, floods), so a test
says what misbehaviour it exercises. It is not a mock of the server; the real client daemon is
tested against the server by the client engineer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedllm_core.certs import PkiPaths
from fedllm_proto.errors import ProtocolError
from fedllm_proto.messages import (
    PROTOCOL_VERSIONS,
    Ack,
    ByeCode,
    Error,
    GlobalModel,
    Hello,
    Reject,
    TrainRequest,
    TriggerReason,
    Update,
    Welcome,
)
from fedllm_proto.transport import Peer, PeerClosed, connect
from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.tensors import l2_norm

TINY_MODEL: dict[str, Any] = {
    "name": "bert",
    "random_init": True,
    "lora_r": 2,
    "max_length": 32,
    "config_overrides": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
}
TINY_DATA: dict[str, Any] = {"max_rows": 600, "test_max": 40}


def accepted(
    client_id: str,
    update_id: str = "",
    *,
    base: int = 0,
    round: int = -1,
    n: int = 1,
    **tensors: np.ndarray,
) -> AcceptedUpdate:
    """An accepted-update record as the door makes it (norm measured), for unit tests."""
    tensors = tensors or {"w": np.zeros(1, np.float32)}
    return AcceptedUpdate(
        client_id=client_id,
        update_id=update_id or f"{client_id}-u",
        base_version=base,
        round=round,
        sample_count=n,
        trigger="round" if round >= 0 else "performance",
        accepted_at=0.0,
        metrics={},
        tensors=dict(tensors),
        norm=l2_norm(tensors),
    )


def tiny_settings_dict(
    state_dir: Path, pki: PkiPaths | None, strategy: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """Settings (as a dict, for TOML or model_validate) of a fast loopback server."""
    cfg: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "state_dir": str(state_dir),
        "strategy": strategy,
        "model": TINY_MODEL,
        "data": TINY_DATA,
        "evaluation": {"every_versions": 1, "max_samples": 40, "batch_size": 40},
        "heartbeat_interval_s": 1.0,
        "idle_timeout_s": 10.0,
        "rounds": {"min_clients": 2, "local_steps": 1, "deadline_s": 5.0},
        "logging": {"level": "info", "json_lines": True},
    }
    if pki is None:
        cfg["insecure"] = True
        cfg["insecure_names_per_address"] = 16  # every scripted client comes from 127.0.0.1
    else:
        cfg["tls"] = {
            "ca": str(pki.ca_cert),
            "cert": str(pki.server_cert),
            "key": str(pki.server_key),
            "revocation_list": str(pki.revocation_list),
        }
    cfg.update(extra)
    return cfg


@dataclass
class Faults:
    """Misbehaviour knobs for a scripted client."""

    nan: bool = False  # every delta holds a NaN
    wrong_shape: bool = False  # the first tensor has one extra row
    replay: bool = False  # re-send the previous update_id once after each accepted upload


@dataclass
class ScriptedClient:
    name: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    fingerprint: str
    sample_count: int = 100
    seed: int = 0
    faults: Faults = field(default_factory=Faults)
    peer: Peer | None = None
    welcome: Welcome | None = None
    versions: list[int] = field(default_factory=list)
    global_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    errors: list[Error] = field(default_factory=list)
    requests: list[TrainRequest] = field(default_factory=list)
    closed_reason: str = ""
    sent: int = 0
    sent_deltas: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    last_uid: str = ""
    replayed: bool = False

    async def connect(self) -> Welcome | Reject:
        self.peer = await connect(self.host, self.port, self.ssl_context, "localhost")
        hello = Hello(
            PROTOCOL_VERSIONS,
            self.fingerprint,
            (),
            self.sample_count,
            self.versions[-1] if self.versions else -1,
            client_name=self.name,
        )
        await self.peer.send(hello)
        reply = await self.peer.recv()
        assert isinstance(reply, Welcome | Reject), reply
        if isinstance(reply, Welcome):
            self.welcome = reply
        return reply

    @property
    def version(self) -> int:
        return self.versions[-1] if self.versions else -1

    def delta(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.sent])
        out = {
            k: rng.normal(0, 0.01, v.shape).astype(np.float32)
            for k, v in self.global_tensors.items()
        }
        if self.faults.nan:
            first = next(iter(out))
            out[first].reshape(-1)[0] = np.nan
        if self.faults.wrong_shape:
            first = next(iter(out))
            out[first] = np.zeros((out[first].shape[0] + 1, *out[first].shape[1:]), np.float32)
        return out

    async def upload(self, round_number: int = -1, update_id: str | None = None) -> str:
        assert self.peer is not None
        trigger = TriggerReason.ROUND if round_number >= 0 else TriggerReason.PERFORMANCE
        uid = update_id or f"{self.name}-{self.seed}-{self.sent}"
        delta = self.delta()
        self.sent_deltas[uid] = delta
        self.last_uid = uid
        update = Update(
            uid, self.version, round_number, self.sample_count, trigger, {"f1_macro": 0.5}, delta
        )
        self.sent += 1
        await self.peer.send(update)
        return uid

    async def serve(self, *, answer_rounds: bool = True) -> None:
        """Receive until the server closes the connection; answer TrainRequests."""
        assert self.peer is not None
        try:
            while True:
                msg = await self.peer.recv()
                if isinstance(msg, GlobalModel):
                    self.versions.append(msg.version)
                    self.global_tensors = dict(msg.tensors)
                elif isinstance(msg, TrainRequest):
                    self.requests.append(msg)
                    if answer_rounds:
                        await self.upload(msg.round)
                elif isinstance(msg, Ack):
                    self.acks.append(msg)
                    if self.faults.replay and not self.replayed:
                        self.replayed = True  # replay the acknowledged update once
                        await self.upload(-1, update_id=msg.update_id)
                elif isinstance(msg, Reject):
                    self.rejects.append(msg)
                elif isinstance(msg, Error):
                    self.errors.append(msg)
        except PeerClosed as exc:
            self.closed_reason = str(exc)
        except (ConnectionError, TimeoutError, ProtocolError) as exc:
            self.closed_reason = repr(exc)

    async def upload_every(self, interval_s: float, count: int) -> None:
        """GSFS-style: `count` uploads against the newest global model, `interval_s` apart."""
        for _ in range(count):
            await asyncio.sleep(interval_s)
            with contextlib.suppress(PeerClosed, ConnectionError):
                await self.upload()

    async def upload_per_version(self, target: int, timeout_s: float = 60.0) -> None:
        """GSFS-style: one upload against each new global model until version `target`."""
        async with asyncio.timeout(timeout_s):
            while self.version < 0:  # no global model yet: nothing to compute a delta against
                await asyncio.sleep(0.01)
            while self.version < target:
                seen = self.version
                with contextlib.suppress(PeerClosed, ConnectionError):
                    await self.upload()
                while self.version == seen and not self.closed_reason:
                    await asyncio.sleep(0.01)
                if self.closed_reason:
                    return

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.close("test done")


# ---------------------------------------------------------------------------- subprocesses


def to_toml(cfg: dict[str, Any]) -> str:
    """Minimal TOML writer for settings dicts (scalars, lists, nested tables)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(
            f"{k} = {_toml_value(v)}"
            if not isinstance(v, dict)
            else f"{k} = {{ {', '.join(f'{a} = {_toml_value(b)}' for a, b in v.items())} }}"
            for k, v in table.items()
        )
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class ServerProcess:
    """`python -m fedllm_server.cli --config ...` as a real child process; JSON logs parsed."""

    started: ClassVar[list[ServerProcess]] = []  # conftest kills leftovers after each test

    def __init__(self, config: Path) -> None:
        import subprocess
        import sys
        import threading

        ServerProcess.started.append(self)

        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedllm_server.cli", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import json

        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "_raw", "line": line.rstrip()}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()

    def wait_event(self, name: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
        """The first logged event `name` whose fields match; raises on timeout or exit."""

        def match() -> dict[str, Any] | None:
            for event in self.events:
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        with self._cond:
            found = self._cond.wait_for(lambda: match() or self.proc.poll() is not None, timeout)
            hit = match()
        if hit is None:
            tail = [e.get("event") for e in self.events[-15:]]
            raise AssertionError(f"no {name} {fields} (found={found}); last events {tail}")
        return hit

    @property
    def port(self) -> int:
        return int(self.wait_event("server_listening")["port"])

    @property
    def fingerprint(self) -> str:
        """The model fingerprint a Hello must carry, once the daemon listens."""
        return str(self.wait_event("server_listening")["fingerprint"])

    def kill9(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, sig: int | None = None, timeout: float = 60.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig if sig is not None else signal.SIGTERM)
        return self.proc.wait(timeout)


def run_with_daemon(settings: Any, attack: Any, timeout_s: float = 30.0) -> Any:
    """Start an in-process server daemon, await ``attack(running)`` (bounded), stop it."""
    from fedllm_server.daemon import start
    from fedllm_server.evaluation import CentralModel

    async def run() -> Any:
        running = await start(settings, CentralModel(settings), install_signals=False)
        try:
            async with asyncio.timeout(timeout_s):
                return await attack(running)
        finally:
            running.state.request_stop("test done")
            await asyncio.wait_for(running.wait(), 60)

    return asyncio.run(run())


async def bye_code(client: ScriptedClient) -> ByeCode | None:
    """Read (global models, acks) until the server ends the conversation; its Bye's code."""
    assert client.peer is not None
    try:
        async with asyncio.timeout(60):
            while True:
                await client.peer.recv()
    except PeerClosed as exc:
        return exc.bye.code if exc.bye is not None else None


# --- silent TCP peers (the connection-cap attacks) ------------------------------------------
ATTACKER = "127.0.0.2"  # the whole 127/8 is loopback on Linux: another source address


def silent_connections(port: int, count: int, source: str = ATTACKER) -> list[socket.socket]:
    """`count` TCP connections from `source` that never say anything."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))  # the kernel completes it; the server decides after
        socks.append(sock)
    return socks


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed `sock` within 10 s (a held connection times out: False)."""
    sock.settimeout(10.0)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- an engine on a two-entry model (the privacy tests) -------------------------------------
def small_engine(tmp_path: Path, strategy: Any, privacy: Any, fingerprint: str = "fp") -> Any:
    """An Engine on {"w": zeros(2)}: checkpointed at version 0, its pool log replayed."""
    from fedllm_server.durable.checkpoint import CheckpointStore
    from fedllm_server.durable.poollog import PoolLog
    from fedllm_server.engine import Engine
    from fedllm_server.strategies import ValidationSettings

    engine = Engine(
        strategy,
        ValidationSettings(),
        fingerprint,
        CheckpointStore(tmp_path / "checkpoints"),
        PoolLog(tmp_path / "pool.log"),
        privacy=privacy,
    )
    if not engine.load({"w": np.zeros(2, np.float32)}, 0.0).from_checkpoint:
        engine.checkpoint({"next_round": 0, "enrolled": []}, 0.0)
    engine.replay()
    return engine
