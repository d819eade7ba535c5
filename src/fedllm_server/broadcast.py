"""Broadcast of a global model: encode ONCE per encoding off the loop, queue the same bytes to all.

Rules: `encode_global` runs the codec in a worker thread (a few MB of tensors must not stall
heartbeats) and returns the transport's `PreparedMessage`; `fan_out` offers that one object to
every session's bounded outbox without waiting for any of them, so all clients are sent to
concurrently by their own writer tasks and a slow one is dropped rather than waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedllm_proto.codec import Encoding
from fedllm_proto.messages import GlobalModel
from fedllm_proto.transport import PreparedMessage, prepare
from fedllm_server.broadcast_encoding import CAPABILITY
from fedllm_server.session import ClientSession
from fedllm_server.strategies.base import TensorDict

OFFER_BATCH = 256  # sessions offered a broadcast per loop turn


@dataclass(frozen=True)
class FanOut:
    queued: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # outbox full: disconnected to resync
    bytes_out: int = 0  # encoded bytes times the clients it was queued to


def prepared_size(prepared: PreparedMessage) -> int:
    """Encoded size of a prepared message in bytes."""
    return int(prepared.nbytes)


async def encode_global(
    version: int, tensors: TensorDict, encoding: Encoding = Encoding.RAW
) -> PreparedMessage:
    """Build and encode GlobalModel(version, tensors, encoding) once, in a worker thread."""
    message = GlobalModel(version=version, tensors=tensors, encoding=encoding)
    return await asyncio.to_thread(prepare, message)


def model_for(
    session: ClientSession, raw: PreparedMessage, lossy: PreparedMessage | None
) -> PreparedMessage:
    """The lossy encoding of the current model to a client that decodes it, else the raw one
    (both decode to the same tensors: the server's θ^v is the decoded lossy model)."""
    if lossy is not None and CAPABILITY in session.capabilities:
        return lossy
    return raw


async def fan_out(
    sessions: Iterable[ClientSession],
    prepared: PreparedMessage,
    lossy: PreparedMessage | None = None,
) -> FanOut:
    """Queue `prepared` (`lossy` to the clients that decode it) to every session; never waits
    for a client, so none waits for another.

    It gives the loop a turn every ``OFFER_BATCH`` sessions: each offer wakes that session's
    writer, and 10,000 of them in one loop turn stalled joins and heartbeats ~0.3 s
    (bench/scale.py). The sessions are the ones present when it starts; a client that joins
    meanwhile is sent ``prepared`` by its own join.
    """
    report, sent = FanOut(), 0
    for i, session in enumerate(list(sessions)):
        message = model_for(session, prepared, lossy)
        if session.offer(message):
            report.queued.append(session.client_id)
            sent += prepared_size(message)
        else:
            report.dropped.append(session.client_id)
        if i % OFFER_BATCH == OFFER_BATCH - 1:
            await asyncio.sleep(0)
    return FanOut(report.queued, report.dropped, sent)
