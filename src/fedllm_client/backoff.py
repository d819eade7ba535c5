"""Reconnect delays: exponential backoff with jitter (pure; the caller sleeps).

Rules: delay n (0-based) is ``min(max_s, initial_s * multiplier**n)`` scaled by a uniform
factor in ``[1 - jitter, 1 + jitter]`` and clamped to ``max_s``, so a fleet of edge hosts
restarted by one server outage do not reconnect in lock-step. ``reset()`` after a session
that got as far as the handshake.
"""

from __future__ import annotations

import math
import random

from pydantic import Field, model_validator

from fedllm_core.settings import FrozenSettings


class BackoffSettings(FrozenSettings):
    """The ``[backoff]`` section."""

    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.2, ge=0, le=1)  # fraction of the delay, both ways
    max_attempts: int = Field(default=0, ge=0)  # consecutive failures before giving up; 0: never

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> BackoffSettings:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self


class Backoff:
    """Delay sequence for consecutive failed connection attempts."""

    def __init__(self, settings: BackoffSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.failures = 0
        self._rng = rng or random.Random()
        # The exponent past which the delay is max_s anyway. Without it a client that keeps
        # retrying through a long outage overflows the float (2.0**1024) after ~1,000 attempts.
        self._cap = _exponent_reaching(settings.max_s / settings.initial_s, settings.multiplier)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt (counts one more failure)."""
        s = self.settings
        base = min(s.max_s, s.initial_s * s.multiplier ** min(self.failures, self._cap))
        self.failures += 1
        factor = self._rng.uniform(1.0 - s.jitter, 1.0 + s.jitter)
        return min(s.max_s, base * factor)

    def exhausted(self) -> bool:
        return bool(self.settings.max_attempts) and self.failures >= self.settings.max_attempts

    def reset(self) -> None:
        self.failures = 0


def _exponent_reaching(ratio: float, multiplier: float) -> int:
    """Smallest n with multiplier**n >= ratio (0 when the delay never grows)."""
    if multiplier <= 1 or ratio <= 1:
        return 0
    return math.ceil(math.log(ratio) / math.log(multiplier))
