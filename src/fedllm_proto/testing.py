"""Test helpers shared by every suite that speaks the wire in memory (no sockets).

Rules: pure sans-I/O like the modules it drives; the examples cover every message type,
every tensor dtype and both tensor message kinds, so a new field or type shows up in every
suite that iterates them.
"""

from __future__ import annotations

from collections.abc import Iterable

import ml_dtypes
import numpy as np

from fedllm_proto.codec import Encoding, TensorDict
from fedllm_proto.connection import NEED_DATA, Connection, ConnectionClosed, NeedData
from fedllm_proto.errors import ErrorCode
from fedllm_proto.limits import Limits
from fedllm_proto.messages import (
    PROTOCOL_VERSIONS,
    Ack,
    Bye,
    Error,
    GlobalModel,
    Heartbeat,
    Hello,
    Message,
    Reject,
    RejectCode,
    TrainRequest,
    TriggerReason,
    Tuning,
    Update,
    Welcome,
)
from fedllm_proto.states import Role


def example_tensors(seed: int = 0) -> TensorDict:
    """Every allowed dtype, including a 0-d and an empty tensor."""
    rng = np.random.default_rng(seed)
    return {
        "layer0.lora_A": rng.standard_normal((8, 16), dtype=np.float32),
        "layer0.lora_B": rng.standard_normal((16, 8)).astype(np.float16),
        "head.weight": rng.standard_normal((4, 8)).astype(ml_dtypes.bfloat16),
        "head.bias": np.array(0.5, dtype=np.float32),
        "q.int8": rng.integers(-128, 127, size=(5,), dtype=np.int8),
        "steps": np.array([1, 2, 3], dtype=np.int32),
        "ids": np.arange(7, dtype=np.int64),
        "mask": np.ones((2, 3), dtype=np.uint8),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def hello(**overrides: object) -> Hello:
    fields: dict[str, object] = {
        "protocol_versions": PROTOCOL_VERSIONS,
        "model_fingerprint": "fp-1",
        "capabilities": ("partial_update",),
        "sample_count": 100,
        "last_global_version": -1,
        "client_name": "client-1",
    }
    fields.update(overrides)
    return Hello(**fields)  # type: ignore[arg-type]


def welcome(version: int = PROTOCOL_VERSIONS[-1]) -> Welcome:
    return Welcome(version, "client-1", "gsfs", {"q": 0.6, "eta": 1.0, "name": "x"}, 3, 5.0)


def update(encoding: Encoding = Encoding.RAW, tensors: TensorDict | None = None) -> Update:
    return Update(
        "upd-1",
        3,
        -1,
        100,
        TriggerReason.GRADIENT_NORM,
        {"f1_macro": 0.8, "loss": 0.25},
        example_tensors() if tensors is None else tensors,
        encoding,
    )


def server_messages() -> list[Message]:
    """What a server may send once the conversation is open."""
    return [
        GlobalModel(4, example_tensors(1)),
        TrainRequest(2, 4, 50, 30.0),
        Ack("upd-1", 5),
        Reject("upd-2", RejectCode.TOO_STALE, "base 1 < 3"),
        Tuning(4, 0.03, 4.0),
        Heartbeat(),
    ]


def client_messages() -> list[Message]:
    """What a client may send once the conversation is open."""
    out: list[Message] = [update(e) for e in Encoding]
    return [*out, Heartbeat()]


def closing_messages() -> list[Message]:
    return [Error(ErrorCode.SHUTTING_DOWN, "bye now"), Bye("done")]


def pair(limits: Limits | None = None, now: float = 0.0) -> tuple[Connection, Connection]:
    """A client and a server Connection, not yet greeted."""
    client = Connection(Role.CLIENT, limits=limits, now=now)
    server = Connection(Role.SERVER, limits=limits, now=now)
    return client, server


def open_pair(limits: Limits | None = None) -> tuple[Connection, Connection]:
    """A client and a server after Hello / Welcome."""
    client, server = pair(limits)
    server.receive_data(client.send(hello(), 0.0), 0.0)
    assert isinstance(server.next_event(), Hello)
    client.receive_data(server.send(welcome(), 0.0), 0.0)
    assert isinstance(client.next_event(), Welcome)
    return client, server


def feed(conn: Connection, pieces: Iterable[bytes], now: float = 0.0) -> list[object]:
    """Feed pieces in order; every event produced (NEED_DATA excluded)."""
    events: list[object] = []
    for piece in pieces:
        conn.receive_data(piece, now)
        events.extend(drain(conn))
    return events


def drain(conn: Connection) -> list[Message | ConnectionClosed]:
    out: list[Message | ConnectionClosed] = []
    while not isinstance(event := conn.next_event(), NeedData):
        out.append(event)
    return out


def tensors_equal(a: TensorDict, b: TensorDict) -> bool:
    """Bit-exact equality of two TensorDicts (names, dtypes, shapes and bytes)."""
    if a.keys() != b.keys():
        return False
    return all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
        for k in a
    )


__all__ = ["NEED_DATA", "drain", "example_tensors", "feed", "open_pair", "pair", "tensors_equal"]
