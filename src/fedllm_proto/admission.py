"""Connection caps at the accept: a global one and one per remote address.

Rules: a socket counts from its accept until its handler is done, whatever phase it is in (TLS
handshake, waiting for Hello, serving), so silent peers count too. A socket past a cap is
closed at once, before any TLS byte, and reported to ``on_refused`` with the reason
(`too_many_connections`, `too_many_from_address`). The counts live on the event loop's
thread only (no lock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

OnRefused = Callable[[str, str], None]  # (reason, "host:port")

TOO_MANY_CONNECTIONS = "too_many_connections"
TOO_MANY_FROM_ADDRESS = "too_many_from_address"


@dataclass
class Admission:
    """Open sockets, in all and per host; ``admit`` says why one is refused (None: admitted)."""

    max_connections: int
    max_per_address: int
    open_total: int = 0
    open_by_host: dict[str, int] = field(default_factory=dict)

    def admit(self, host: str) -> str | None:
        if self.open_total >= self.max_connections:
            return TOO_MANY_CONNECTIONS
        held = self.open_by_host.get(host, 0)
        if held >= self.max_per_address:
            return TOO_MANY_FROM_ADDRESS
        self.open_total += 1
        self.open_by_host[host] = held + 1
        return None

    def release(self, host: str) -> None:
        self.open_total -= 1
        held = self.open_by_host.get(host, 0) - 1
        if held > 0:
            self.open_by_host[host] = held
        else:  # no entry per departed host: the dict stays as small as the live set
            self.open_by_host.pop(host, None)
