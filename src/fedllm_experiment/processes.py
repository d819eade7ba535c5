"""Child daemon processes for a loopback deployment: spawn, watch, stop, account CPU time.

Rules: every daemon runs in its own session (process group), so a terminal Ctrl-C reaches only
the orchestrator, which then stops the children in order (SIGTERM, a grace period, SIGKILL)
instead of every process racing its own SIGINT handler. Children are reaped with ``os.wait4`` so
their CPU seconds are exact (the honest energy proxy on a machine without an energy counter).
stdout and stderr go to one log file per daemon; a crash is reported with its last lines.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class DaemonCrashed(RuntimeError):
    """A daemon exited when it should not have (or with a failure status)."""

    def __init__(self, name: str, returncode: int, log_tail: list[str]) -> None:
        self.name, self.returncode, self.log_tail = name, returncode, log_tail
        how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        tail = "\n".join(f"    {line}" for line in log_tail) or "    (empty log)"
        super().__init__(f"{name} died ({how}); last log lines:\n{tail}")


def tail_lines(path: Path, count: int = 15) -> list[str]:
    """Last ``count`` lines of a (possibly large, possibly absent) log file."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-count:]


@dataclass
class Daemon:
    """One child daemon: its command line, log file, process and (after exit) CPU seconds."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    cpu_s: float = 0.0
    max_rss_kb: int = 0  # peak resident set size (ru_maxrss), known once reaped
    started_at: float = 0.0
    ended_at: float = 0.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._log = log
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # our Ctrl-C must not reach it before we decide to stop it
        )

    def poll(self) -> int | None:
        """Reap the child if it has exited; returns its exit status (negative: signal)."""
        if self.returncode is not None or self.proc is None:
            return self.returncode
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return None
        self._finish(os.waitstatus_to_exitcode(status), usage)
        return self.returncode

    def _finish(self, returncode: int, usage: resource.struct_rusage) -> None:
        self.returncode, self.ended_at = returncode, time.monotonic()
        self.cpu_s, self.max_rss_kb = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
        assert self.proc is not None
        self.proc.returncode = returncode  # we reaped it; keep Popen from trying again
        if self._log is not None:
            self._log.close()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited between poll and kill
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.returncode

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM (daemons drain and exit 0), then SIGKILL if it outstays ``grace_s``."""
        if self.poll() is not None or self.proc is None:
            return self.returncode
        self.signal(signal.SIGTERM)
        if self.wait(grace_s) is None:
            self.signal(signal.SIGKILL)
            self.wait(5.0)
        return self.returncode

    def crash(self) -> DaemonCrashed:
        return DaemonCrashed(self.name, self.returncode or 0, tail_lines(self.log_path))


@dataclass
class Fleet:
    """The server and its clients for one strategy run; always stopped, whatever happens."""

    server: Daemon
    clients: list[Daemon]

    @property
    def all(self) -> list[Daemon]:
        return [self.server, *self.clients]

    def check_clients(self) -> None:
        """A client that fails (non-zero status, or killed) is a crash worth stopping for.

        Status 0 is a client that finished on its own (the server said Bye), not a crash.
        """
        for daemon in self.clients:
            if daemon.poll() not in (None, 0):
                raise daemon.crash()

    def stop_all(self, grace_s: float = 10.0) -> None:
        # clients first, so the server does not log their disconnect as a fault mid-drain
        for daemon in [*self.clients, self.server]:
            daemon.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for daemon in self.all:
            daemon.wait(max(0.0, deadline - time.monotonic()))
        for daemon in self.all:
            daemon.stop(grace_s=0.0)

    def wait_clients(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for daemon in self.clients:
            daemon.wait(max(0.0, deadline - time.monotonic()))

    def exit_codes(self) -> dict[str, int | None]:
        return {d.name: d.returncode for d in self.all}

    def cpu_seconds(self) -> dict[str, float]:
        return {d.name: round(d.cpu_s, 3) for d in self.all}
