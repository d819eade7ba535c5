"""Every deadline of one link in one record, so no layer keeps a timeout constant of its own.

The transport (``serve``, ``connect``) and each ``Peer`` read their deadlines from a
``Timeouts``; the daemons build theirs from their settings (``ServerSettings.timeouts``) and
pass it down. docs/protocol.md ("Timeouts") says what each one bounds. Pure: no clock here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; ``None`` switches a deadline off where that is allowed."""

    # TCP connect plus the TLS handshake, on either side: a silent or non-TLS peer is dropped
    tls_handshake_s: float = 10.0
    # the server waits this long for Hello once the link is up (the client as long for Welcome)
    hello_s: float = 15.0
    # send a Heartbeat after this much silence from us; a client with None uses the interval
    # the server announces in Welcome
    heartbeat_s: float | None = 5.0
    # the peer silent this long means the link is dead; it also bounds a send the peer does
    # not read (a stalled send)
    idle_s: float | None = 30.0
    # closing: writing our Bye, then the peer taking what we still had buffered
    bye_s: float = 5.0
    close_flush_s: float = 5.0
    # after a protocol error: how long the peer may read our Error frame before we close
    linger_s: float = 2.0

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"timeout {name} must be > 0 seconds, got {value!r}")
        hb, idle = self.heartbeat_s, self.idle_s
        if hb is not None and idle is not None and idle <= hb:
            raise ValueError("idle_s must be longer than heartbeat_s")

    def but(self, **changes: Any) -> Timeouts:
        """A copy with some deadlines changed (``Timeouts().but(idle_s=0.5)``)."""
        return replace(self, **changes)


SERVER = Timeouts()
# A client takes the heartbeat interval from the server's Welcome.
CLIENT = Timeouts(heartbeat_s=None)
