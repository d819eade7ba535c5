"""Where the client is, for an operator: systemd STATUS= and periodic progress log events.

STATUS= reads "training step s/budget" while training (refreshed at most every
`STATUS_EVERY_S`, so a fast model does not send a datagram per step) and "waiting for version
N" once an update is on the wire. A `training_progress` event (step, budget, mean loss since
the last one) goes to the log every `LOG_EVERY_S`, so a client's log shows it is alive and
learning without reading metrics.jsonl. Called from the worker thread: `notify` is one
non-blocking datagram and structlog is thread-safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from fedllm_core.systemd import StatusLine

log = structlog.get_logger("fedllm.client")
STATUS_EVERY_S = 1.0
LOG_EVERY_S = 15.0


class Progress:
    def __init__(self, budget: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._line = StatusLine()
        self._status_at = self._log_at = float("-inf")  # the first step reports at once
        self._losses: list[float] = []

    def step(self, steps_used: int, loss: float) -> None:
        now = self._clock()
        self._losses.append(loss)
        done = steps_used >= self.budget
        if done or now - self._status_at >= STATUS_EVERY_S:
            self._status_at = now
            self._line.set(f"training step {steps_used}/{self.budget}")
        if done or now - self._log_at >= LOG_EVERY_S:
            self._log_at = now
            mean = sum(self._losses) / len(self._losses)
            self._losses.clear()
            log.info("training_progress", step=steps_used, budget=self.budget, loss_avg=mean)

    def waiting(self, version: int) -> None:
        self._line.set(f"waiting for version {version}")
