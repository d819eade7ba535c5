"""Synchronous-round state machine for FedAvg / FedOpt (sans-I/O: time is the `now` argument).

States: IDLE (waiting for enough connected clients) -> RUNNING (a round: selected clients,
deadline) -> AGGREGATING (the daemon folds and applies the round off the loop) -> IDLE.
Rules:
- A round starts when at least `min_clients` are connected; it selects
  max(min_clients, ceil(fraction * connected)) of them with the seeded RNG the caller passes.
- A round closes when every selected client has contributed, when every selected client that
  has not contributed is gone (disconnected), or at its deadline, whichever comes first. It
  never waits forever: the deadline always fires. Stragglers and dropouts are reported in the
  `CloseRound` action so the daemon can log and count them.
- A round with no contribution is abandoned (nothing to aggregate) and the next one starts.
- A selected client that reconnects during its round is sent the train request again.
The GSFS pool needs no rounds; its quorum/timeout logic is `fedllm_server.pool`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class RoundConfig:
    """The round shape (from `ServerSettings.rounds`)."""

    fraction: float
    min_clients: int
    local_steps: int
    deadline_s: float


@dataclass(frozen=True)
class StartRound:
    """Send TrainRequest(round, base_version, local_steps, deadline) to `clients`."""

    round: int
    clients: tuple[str, ...]
    base_version: int
    local_steps: int
    deadline_s: float


@dataclass(frozen=True)
class CloseRound:
    """The round is over: aggregate what arrived (when `contributed` is not empty)."""

    round: int
    reason: str  # complete | deadline | dropouts
    contributed: tuple[str, ...]
    stragglers: tuple[str, ...]  # selected, still connected, did not report in time
    dropouts: tuple[str, ...]  # selected, disconnected before reporting
    started_at: float
    closed_at: float


Action = StartRound | CloseRound


class Phase(Enum):
    IDLE = "idle"
    RUNNING = "running"
    AGGREGATING = "aggregating"


@dataclass
class _Round:
    number: int
    base_version: int
    selected: set[str]
    started_at: float
    deadline_at: float
    contributed: list[str] = field(default_factory=list)


class SyncRounds:
    """Decides when rounds start and end; the daemon performs the I/O the actions ask for."""

    def __init__(
        self, config: RoundConfig, rng: random.Random, *, version: int = 0, next_round: int = 0
    ) -> None:
        self.config = config
        self.rng = rng
        self.version = version
        self.next_round = next_round
        self.phase = Phase.IDLE
        self.connected: set[str] = set()
        self.current: _Round | None = None
        self._resumed: list[str] = []  # contributions recovered from the log after a restart

    # ------------------------------------------------------------------ inputs

    def connect(self, client_id: str, now: float) -> StartRound | None:
        """A client joined; returns a train request to resend if it is owed one."""
        self.connected.add(client_id)
        rnd = self.current
        if rnd is None or client_id not in rnd.selected or client_id in rnd.contributed:
            return None
        remaining = max(0.0, rnd.deadline_at - now)
        return StartRound(
            rnd.number, (client_id,), rnd.base_version, self.config.local_steps, remaining
        )

    def disconnect(self, client_id: str) -> None:
        self.connected.discard(client_id)

    def resume(self, round_number: int, contributed: list[str]) -> None:
        """After a restart: round `round_number` already holds these logged contributions."""
        self.next_round = round_number
        self._resumed = list(dict.fromkeys(contributed))

    def expects(self, client_id: str, round_number: int) -> bool:
        """Whether an update from `client_id` for `round_number` belongs to the running round."""
        rnd = self.current
        return (
            self.phase is Phase.RUNNING
            and rnd is not None
            and rnd.number == round_number
            and client_id in rnd.selected
            and client_id not in rnd.contributed
        )

    def contributed(self, client_id: str) -> None:
        """An update from `client_id` was accepted into the running round."""
        if self.current is not None and client_id not in self.current.contributed:
            self.current.contributed.append(client_id)

    def withdraw(self, client_id: str) -> None:
        """A reserved contribution was rejected by the door: the client may try again."""
        if self.current is not None and client_id in self.current.contributed:
            self.current.contributed.remove(client_id)

    def aggregated(self, new_version: int) -> None:
        """The daemon finished applying the closed round."""
        self.version = new_version
        self.phase = Phase.IDLE
        self.current = None

    # ------------------------------------------------------------------ decisions

    def poll(self, now: float) -> list[Action]:
        if self.phase is Phase.IDLE:
            return self._maybe_start(now)
        if self.phase is Phase.RUNNING:
            return self._maybe_close(now)
        return []

    def next_deadline(self) -> float | None:
        """When `poll` must be called at the latest (the running round's deadline)."""
        return self.current.deadline_at if self.phase is Phase.RUNNING and self.current else None

    def _target(self) -> int:
        cfg = self.config
        return max(cfg.min_clients, math.ceil(cfg.fraction * len(self.connected)))

    def _maybe_start(self, now: float) -> list[Action]:
        resumed = self._resumed
        if len(self.connected) + len(resumed) < self.config.min_clients:
            return []
        candidates = sorted(self.connected - set(resumed))
        want = min(len(candidates), max(0, self._target() - len(resumed)))
        chosen = self.rng.sample(candidates, want)
        cfg = self.config
        rnd = _Round(
            self.next_round,
            self.version,
            set(chosen) | set(resumed),
            now,
            now + cfg.deadline_s,
            contributed=list(resumed),
        )
        self.current, self.phase, self._resumed = rnd, Phase.RUNNING, []
        self.next_round += 1
        return [
            StartRound(
                rnd.number, tuple(sorted(chosen)), rnd.base_version, cfg.local_steps, cfg.deadline_s
            )
        ]

    def _maybe_close(self, now: float) -> list[Action]:
        rnd = self.current
        assert rnd is not None
        missing = rnd.selected - set(rnd.contributed)
        waiting_on = missing & self.connected
        if not missing:
            reason = "complete"
        elif not waiting_on:
            reason = "dropouts"
        elif now >= rnd.deadline_at:
            reason = "deadline"
        else:
            return []
        return [self._close(rnd, reason, waiting_on, missing - waiting_on, now)]

    def _close(
        self, rnd: _Round, reason: str, stragglers: set[str], dropouts: set[str], now: float
    ) -> CloseRound:
        if rnd.contributed:
            self.phase = Phase.AGGREGATING
        else:
            self.phase, self.current = Phase.IDLE, None  # nothing arrived: abandon the round
        return CloseRound(
            rnd.number,
            reason,
            tuple(rnd.contributed),
            tuple(sorted(stragglers)),
            tuple(sorted(dropouts)),
            rnd.started_at,
            now,
        )
