"""One connected client: its identity, its bounded outbox and the task that drains it.

Rules: after the handshake every message to a client goes through its outbox (a bounded
asyncio queue) and is sent by that session's writer task only, so one slow client never
delays another and message order per client is kept. When the outbox is full the client has
fallen too far behind: it is disconnected (`outbox_full`) and resynchronises on reconnect, where
the handshake sends it the current global model. Counters here feed logs and the metrics file.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, TypeAlias

import structlog

from fedllm_proto.messages import Message
from fedllm_proto.transport import Peer, PreparedMessage

log = structlog.get_logger("fedllm.server.session")

SEND_GRACE_S = 5.0  # how long a close waits for a message already being written
# Sessions writing a big message (a broadcast global model) at the same time. Every writer
# that is ready runs in the same turn of the loop, encrypting there, and each one in flight
# holds TLS buffers: with 10,000 clients a few at a time bound both, and one slow client
# still cannot hold the others up (it holds one of 16 places, up to the stall timeout).
BULK_SENDERS = 16

Outgoing: TypeAlias = Message | PreparedMessage


@dataclass
class SessionStats:
    accepted: int = 0
    rejected: int = 0
    consecutive_rejects: int = 0
    bytes_in: int = 0  # payload bytes of accepted updates


def bulk_gate() -> asyncio.Semaphore:
    """The one gate a server's sessions share for big messages (see BULK_SENDERS)."""
    return asyncio.Semaphore(BULK_SENDERS)


class ClientSession:
    """A client connection after a successful Hello/Welcome."""

    def __init__(
        self,
        peer: Peer,
        client_id: str,
        fingerprint: str,
        sample_count: int,
        queue_bound: int,
        bulk: asyncio.Semaphore | None = None,
        capabilities: frozenset[str] = frozenset(),
    ) -> None:
        self.peer = peer
        self.client_id = client_id
        self.fingerprint = fingerprint
        self.sample_count = sample_count
        self.capabilities = capabilities  # what its Hello listed (e.g. "tuning")
        self.stats = SessionStats()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._outbox: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=queue_bound)
        self._writer: asyncio.Task[None] | None = None
        self._sending = False
        self._bulk = bulk  # shared with every session of this server, if given

    def start(self) -> None:
        self._writer = asyncio.create_task(self._drain(), name=f"writer-{self.client_id}")

    def offer(self, item: Outgoing) -> bool:
        """Queue a message without waiting; on overflow drop the client and return False."""
        if self.closed.is_set():
            return False
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            log.warning(
                "client_send_queue_full", client_id=self.client_id, bound=self._outbox.maxsize
            )
            self.abort("outbox_full")
            return False
        return True

    async def _drain(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                self._sending = True
                if isinstance(item, PreparedMessage):
                    async with self._bulk or contextlib.nullcontext():
                        await self.peer.send_prepared(item)
                else:
                    await self.peer.send(item)
                self._sending = False
                self._outbox.task_done()
                if self.closed.is_set():
                    return  # closing: stop between messages, never in the middle of one
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-send: the reader sees it too
            log.info("client_send_failed", client_id=self.client_id, error=repr(exc))
            self.abort("send_failed")

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued has been written (bounded); True if it was."""
        if self._writer is None or self._writer.done():
            return self._outbox.empty()
        try:
            await asyncio.wait_for(self._outbox.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    def abort(self, reason: str) -> None:
        """Mark closed and tear the connection down from a synchronous context."""
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
            asyncio.get_running_loop().create_task(self._close_quietly(reason))

    async def close(self, reason: str, *, flush_s: float = 0.0) -> None:
        """Flush (optionally), say Bye and close; safe to call more than once."""
        if flush_s > 0 and not self.closed.is_set():
            await self.flush(flush_s)
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()
        await self._close_quietly(reason)

    async def _close_quietly(self, reason: str) -> None:
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task() and not writer.done():
            if not self._sending:
                writer.cancel()  # idle in get(): nothing half-written
            # mid-message: let that message finish (bounded) so the peer sees Bye, not a torn
            # frame; wait_for cancels it if the client is too slow.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, SEND_GRACE_S)
        with contextlib.suppress(Exception):
            await self.peer.close(reason)

    def describe(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "address": self.peer.address,
            "accepted": self.stats.accepted,
            "rejected": self.stats.rejected,
        }
