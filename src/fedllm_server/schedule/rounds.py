"""Synchronous rounds for FedAvg / FedOpt: a `Schedule` (sans-I/O: time is the `now` argument).

States: IDLE (waiting for enough connected clients) -> RUNNING (a round: selected clients,
deadline) -> AGGREGATING (the engine applies the round) -> IDLE.
Rules:
- A round starts when at least `min_clients` are connected; it selects
  max(min_clients, ceil(fraction * connected)) of them with the seeded RNG.
- An update is expected only from a selected client, for the running round, once. `expects`
  reserves the client's place while the door judges the update; `accepted` turns it into a
  contribution (and folds it at once: FedAvg/FedOpt weights are known on arrival, so a round
  costs one model's worth of sums), `refused` gives the place back.
- A round closes when every selected client has contributed, when every selected client that
  has not contributed is gone (disconnected), or at its deadline, whichever comes first; never
  while an update is being judged (that one decides which). It never waits forever: the
  deadline always fires. Stragglers and dropouts are reported in `CloseRound`.
- A round with no contribution is abandoned (nothing to aggregate) and the next one starts.
- A selected client that reconnects during its round is sent the train request again.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.schedule.actions import Action, Aggregate, CloseRound, Fold, StartRound
from fedllm_server.schedule.base import RoundConfig, ScheduleContext, enrolled_from


class Phase(Enum):
    IDLE = "idle"
    RUNNING = "running"
    AGGREGATING = "aggregating"


@dataclass
class _Round:
    number: int
    selected: set[str]
    started_at: float
    deadline_at: float
    contributed: list[str] = field(default_factory=list)  # accepted, in arrival order
    judging: set[str] = field(default_factory=set)  # reserved: at the door right now


class SyncRounds:
    """Decides when rounds start and end; the server performs the I/O the actions ask for."""

    max_lag = 0  # a round's updates must be based on the current version

    def __init__(
        self,
        config: RoundConfig,
        rng: random.Random,
        *,
        next_round: int = 0,
        enrolled: set[str] | None = None,
    ) -> None:
        self.config = config
        self.rng = rng
        self.next_round = next_round
        self.phase = Phase.IDLE
        self.connected: set[str] = set()
        self.enrolled: set[str] = set() if enrolled is None else enrolled
        self.current: _Round | None = None
        self._resumed: list[str] = []  # contributions recovered from the log after a restart

    @classmethod
    def restore(cls, ctx: ScheduleContext) -> SyncRounds:
        rng = random.Random(ctx.seed * 1_000_003 + ctx.version)  # no replay of old draws
        next_round = int(ctx.meta.get("next_round", 0))
        return cls(ctx.rounds, rng, next_round=next_round, enrolled=enrolled_from(ctx.meta))

    # ------------------------------------------------------------------ inputs

    def joined(self, client_id: str, now: float) -> list[Action]:
        """A client joined; a train request to resend if it is owed one."""
        self.connected.add(client_id)
        self.enrolled.add(client_id)
        rnd = self.current
        if rnd is None or client_id not in rnd.selected or client_id in rnd.contributed:
            return []
        remaining = max(0.0, rnd.deadline_at - now)
        return [StartRound(rnd.number, (client_id,), self.config.local_steps, remaining)]

    def left(self, client_id: str) -> None:
        self.connected.discard(client_id)

    def expects(self, client_id: str, round_number: int) -> bool:
        """Whether an update from `client_id` for `round_number` belongs to the running round;
        True reserves its place until `accepted` or `refused`."""
        rnd = self.current
        if (
            self.phase is not Phase.RUNNING
            or rnd is None
            or rnd.number != round_number
            or client_id not in rnd.selected
            or client_id in rnd.contributed
            or client_id in rnd.judging
        ):
            return False
        rnd.judging.add(client_id)
        return True

    def accepted(self, update: AcceptedUpdate, now: float) -> list[Action]:
        """The reserved update passed the door: it contributes, and is folded now."""
        rnd = self.current
        if rnd is not None and update.client_id in rnd.judging:
            rnd.judging.discard(update.client_id)
            rnd.contributed.append(update.client_id)
        return [Fold({update.update_id: 1})]

    def refused(self, client_id: str) -> None:
        """The reserved update was rejected: the client may try again."""
        if self.current is not None:
            self.current.judging.discard(client_id)

    def replayed(self, updates: Sequence[AcceptedUpdate], now: float) -> list[Action]:
        """After a restart: the logged updates are contributions to the round they name."""
        if not updates:
            return []
        self.next_round = updates[0].round
        self._resumed = list(dict.fromkeys(u.client_id for u in updates))
        return [Fold({u.update_id: 1 for u in updates})]

    def aggregated(self, now: float) -> None:
        """The server finished applying (or abandoning) the closed round."""
        self.phase = Phase.IDLE
        self.current = None

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"next_round": self.next_round, "enrolled": sorted(self.enrolled)}

    # ------------------------------------------------------------------ decisions

    def poll(self, now: float) -> list[Action]:
        if self.phase is Phase.IDLE:
            return self._maybe_start(now)
        if self.phase is Phase.RUNNING:
            return self._maybe_close(now)
        return []

    def next_deadline(self, now: float) -> float | None:
        """When `poll` must be called at the latest: the running round's deadline (None while
        an update is at the door: its verdict wakes the server)."""
        rnd = self.current
        if self.phase is not Phase.RUNNING or rnd is None or rnd.judging:
            return None
        return rnd.deadline_at

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
            set(chosen) | set(resumed),
            now,
            now + cfg.deadline_s,
            contributed=list(resumed),
        )
        self.current, self.phase, self._resumed = rnd, Phase.RUNNING, []
        self.next_round += 1
        return [StartRound(rnd.number, tuple(sorted(chosen)), cfg.local_steps, cfg.deadline_s)]

    def _maybe_close(self, now: float) -> list[Action]:
        rnd = self.current
        assert rnd is not None
        if rnd.judging:
            return []  # an update is at the door: its verdict decides how the round ends
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
        return self._close(rnd, reason, waiting_on, missing - waiting_on, now)

    def _close(
        self, rnd: _Round, reason: str, stragglers: set[str], dropouts: set[str], now: float
    ) -> list[Action]:
        closed = CloseRound(
            rnd.number,
            reason,
            tuple(rnd.contributed),
            tuple(sorted(stragglers)),
            tuple(sorted(dropouts)),
            rnd.started_at,
            now,
        )
        if not rnd.contributed:
            self.phase, self.current = Phase.IDLE, None  # nothing arrived: abandon the round
            return [closed]
        self.phase = Phase.AGGREGATING
        # every contribution was folded on arrival: nothing left to fold here
        return [closed, Aggregate(reason, now - rnd.started_at, self.snapshot(now))]
