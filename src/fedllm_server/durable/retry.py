"""Retrying a durable write that failed with an I/O error (disk full, a directory gone).

Rules: only `OSError` is retried (anything else is a bug and propagates at once); each failure
is logged (`checkpoint_write_failed`, with the attempt and the error) and counted; the delay
doubles from `first_delay_s` up to `max_delay_s`. After `attempts` failures the last error is
raised for the caller to decide (the engine keeps serving and tries again later). Blocking
sleeps: callers run this in the engine thread, never on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from pydantic import Field

from fedllm_core.settings import FrozenSettings

log = structlog.get_logger("fedllm.server.durable")
T = TypeVar("T")


class RetrySettings(FrozenSettings):
    """How hard a checkpoint write is retried before the server carries on without it."""

    attempts: int = Field(default=4, ge=1, description="tries per checkpoint before giving up")
    first_delay_s: float = Field(default=0.5, ge=0, description="wait after the first failure")
    max_delay_s: float = Field(default=8.0, ge=0, description="longest wait between tries")


class Attempts:
    """Failed attempts so far (the metrics records report it)."""

    def __init__(self) -> None:
        self.failures = 0


def retry_io(
    write: Callable[[], T],
    settings: RetrySettings,
    counter: Attempts,
    what: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`write()`, retried on OSError as `settings` say; raises the last OSError."""
    delay = settings.first_delay_s
    for attempt in range(1, settings.attempts + 1):
        try:
            return write()
        except OSError as exc:
            counter.failures += 1
            last = attempt == settings.attempts
            log.warning(
                "checkpoint_write_failed",
                what=what,
                attempt=attempt,
                of=settings.attempts,
                error=str(exc),
                failures=counter.failures,
                retry_in_s=None if last else delay,
            )
            if last:
                raise
        sleep(delay)
        delay = min(settings.max_delay_s, delay * 2)
    raise AssertionError("unreachable: attempts >= 1")
