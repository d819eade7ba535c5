"""Minimal sd_notify(3) client: READY, WATCHDOG, STOPPING, STATUS over $NOTIFY_SOCKET.

A no-op when not started by systemd with Type=notify, so the daemons call it unconditionally.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send one notification (e.g. ``"READY=1"``); return whether systemd was there to hear it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # Non-blocking: the daemons call this from the event loop, and a notify socket nobody
        # drains (a full queue) must cost a lost notification, never a stalled loop.
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.send(state.encode())
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd configured (the recommended ping period), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class StatusLine:
    """STATUS= for `systemctl status`, sent only when the text changes (no datagram storm)."""

    def __init__(self) -> None:
        self._last: str | None = None

    def set(self, text: str) -> None:
        if text != self._last:
            self._last = text
            notify(f"STATUS={text}")
