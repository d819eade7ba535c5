"""Connection caps at the accept: a global one and one per remote address.

Rules: a socket counts from its accept until its handler is done, whatever phase it is in (TLS
handshake, waiting for Hello, serving), so silent peers count too. A socket past a cap is
closed at once, before any TLS byte, and reported to ``on_refused`` with the reason
(`too_many_connections`, `too_many_from_address`). The counts live on the event loop's
thread only (no lock).
`LogThrottle` keeps a flood of refusals or failed accepts out of the log: a few events per period,
carrying how many it stood for. Time is an argument (`now`), so it is tested without a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

OnRefused = Callable[[str, str], None]  # (reason, "host:port")

LOG_EVERY_S = 10.0  # a throttled event goes out at most LOG_BURST times per this window
LOG_BURST = 10
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


@dataclass
class LogThrottle:
    """At most ``burst`` log events per window of ``every_s``: ``allow(now)`` says whether this
    one may go out; when it may, ``suppressed`` is how many were held back before it (the
    previous window's surplus, reported by the first event of the next)."""

    every_s: float
    burst: int = 1
    suppressed: int = 0
    _window: float | None = None  # when the current window opened
    _sent: int = 0  # events let out in it
    _held: int = 0  # events held back in it

    def allow(self, now: float) -> bool:
        if self._window is None or now - self._window >= self.every_s:
            self._window, self._sent = now, 0
            self.suppressed, self._held = self._held, 0
        elif self._sent >= self.burst:
            self._held += 1
            return False
        else:
            self.suppressed = 0
        self._sent += 1
        return True
