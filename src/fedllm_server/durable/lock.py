"""One server per state directory: an exclusive `flock` on `<state_dir>/lock`.

Rules: the lock is taken before anything in the directory is read or written and held for the
process's life (the kernel drops it when the process dies, even on `kill -9`, so a stale lock
never blocks a restart). A second server on the same directory gets `StateDirBusy` (exit 75,
EX_TEMPFAIL: it can start once the holder has stopped) naming the holder's pid. The state
directory is created 0700; the lock file 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from fedllm_core.errors import ExitCode, FedllmError
from fedllm_server.durable.private import open_private

LOCK_NAME = "lock"


class StateDirBusy(FedllmError):
    """Another process holds the state directory's lock."""

    exit_code = ExitCode.TEMPFAIL


class StateDirLock:
    """The held lock; `release()` (idempotent) lets another server take the directory."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = open_private(self.path, os.O_RDWR)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(self._fd)
            self.release()
            raise StateDirBusy(
                f"state_dir {state_dir} is in use by another fedllm server (pid {holder}): "
                "stop it first, or give this one its own state_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())  # who holds it, for that message

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    return "unknown"
