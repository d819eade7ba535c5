"""The GSFS pool's bookkeeping as a `Schedule` (paper eq. 12): who is in the pool, f_i, the wait.

Rules: one entry per client (a newer upload replaces the older one, which is dropped) but
every accepted upload counts toward that client's frequency f_i. Aggregate at K = ceil(q·N)
distinct clients ("quorum"), or once `max_wait_s` has passed with at least `min_clients`
("timeout"). f_i is counted over the current period plus the W−1 previous aggregation periods
(all when W is None), each period's count capped at `frequency_cap` so a flood of uploads
buys no weight. Aggregating empties the pool and closes the period. Tensor-free: entries
are update ids; the engine holds the tensors. No clock, I/O or threads. `snapshot(now)` stores
times as ages, so a checkpoint survives a restart with a different monotonic clock (downtime
does not count toward the wait); the pooled updates themselves come back from the pool log.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, Literal

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.schedule.actions import Action, Aggregate, Drop
from fedllm_server.schedule.base import ScheduleContext, enrolled_from
from fedllm_server.strategies.settings import GsfsServerSettings

AggregationReason = Literal["quorum", "timeout"]


def federation_size(settings: GsfsServerSettings, enrolled: int) -> int:
    """N: explicit from the settings, or the number of clients enrolled so far."""
    if settings.federation_size_source == "explicit":
        assert settings.federation_size is not None  # guaranteed by the settings validator
        return settings.federation_size
    return max(1, enrolled)


def quorum_size(settings: GsfsServerSettings, enrolled: int) -> int:
    """K = ceil(q·N), computed exactly (0.6·5 is 3, not 4 via float rounding)."""
    n = federation_size(settings, enrolled)
    k = math.ceil(Fraction(str(settings.quorum_fraction)) * n)
    return min(n, max(1, k))


class GsfsSchedule:
    """Pool membership, upload frequencies over the window, and the wait clock."""

    def __init__(
        self,
        settings: GsfsServerSettings,
        max_lag: int,
        now: float,
        enrolled: set[str] | None = None,
    ) -> None:
        self.settings = settings
        self.max_lag = max_lag  # the door's validation.max_staleness
        self.enrolled: set[str] = set() if enrolled is None else enrolled  # N's source
        self.entries: dict[str, str] = {}  # client_id -> newest update_id (arrival order)
        self._current: Counter[str] = Counter()  # uploads in the open period
        self._history: list[Counter[str]] = []  # closed periods inside the window (W−1 max)
        self._total: Counter[str] = Counter()  # closed periods, when W is None
        self.opened_at: float | None = None  # first arrival into the emptied pool
        self.last_aggregation_at: float = now  # or pool creation
        self.aggregations = 0

    @classmethod
    def restore(cls, settings: GsfsServerSettings, ctx: ScheduleContext) -> GsfsSchedule:
        schedule = cls(settings, ctx.max_staleness, ctx.now, enrolled_from(ctx.meta))
        if "pool" in ctx.meta:
            schedule._load(ctx.meta["pool"], ctx.now)
        return schedule

    # --- clients and arrivals -------------------------------------------------------------
    def joined(self, client_id: str, now: float) -> list[Action]:
        self.enrolled.add(client_id)
        return []

    def left(self, client_id: str) -> None:
        return None  # a client that leaves stays enrolled (N) and keeps its pool entry

    def expects(self, client_id: str, round_number: int) -> bool:
        return True  # asynchronous: any client, any time (the door bounds the lag)

    def refused(self, client_id: str) -> None:
        return None

    def accepted(self, update: AcceptedUpdate, now: float) -> list[Action]:
        """Pool an accepted upload; the client's older entry, if any, is dropped."""
        cid = update.client_id
        older = self.entries.pop(cid, None)  # re-insert so order follows latest arrival
        self.entries[cid] = update.update_id
        self._current[cid] += 1
        if self.opened_at is None:
            self.opened_at = now
        return [] if older is None else [Drop((older,))]

    def replayed(self, updates: Sequence[AcceptedUpdate], now: float) -> list[Action]:
        """The pool log's updates arrive again, "now" (the old process's clock means nothing)."""
        dropped: list[str] = []
        for update in updates:
            for action in self.accepted(update, now):
                assert isinstance(action, Drop)
                dropped += action.update_ids
        return [Drop(tuple(dropped))] if dropped else []

    def _capped(self, period: Counter[str]) -> Counter[str]:
        """One period's upload counts, each at most `frequency_cap` (0: uncapped)."""
        cap = self.settings.frequency_cap
        return period if cap == 0 else Counter({c: min(n, cap) for c, n in period.items()})

    def frequencies(self) -> dict[str, int]:
        """f_i over the window (each period capped) for every client with an upload in it."""
        counts = Counter(self._capped(self._current))  # a copy: never update the period
        for period in self._history:
            counts.update(self._capped(period))
        counts.update(self._total)  # capped as each period closed
        return dict(counts)

    # --- the aggregation trigger ----------------------------------------------------------
    def _wait_start(self) -> float | None:
        if self.settings.wait_from == "first_arrival":
            return self.opened_at
        return self.last_aggregation_at

    def due(self, now: float) -> AggregationReason | None:
        """Why the pool should aggregate now, or None to keep waiting."""
        if len(self.entries) >= quorum_size(self.settings, len(self.enrolled)):
            return "quorum"
        start = self._wait_start()
        if (
            start is not None
            and len(self.entries) >= self.settings.min_clients
            and now >= start + self.settings.max_wait_s
        ):
            return "timeout"
        return None

    def poll(self, now: float) -> list[Action]:
        reason = self.due(now)
        return [] if reason is None else [self._take(now, reason)]

    def next_deadline(self, now: float) -> float | None:
        """When `due` will next turn true without another arrival (None: only an arrival can)."""
        if self.due(now) is not None:
            return now
        start = self._wait_start()
        if start is None or len(self.entries) < self.settings.min_clients:
            return None
        return start + self.settings.max_wait_s

    def aggregated(self, now: float) -> None:
        return None  # the period closed when the aggregation was handed out

    def _take(self, now: float, reason: AggregationReason) -> Aggregate:
        """Hand out the pooled update ids with their f_i; empty the pool and close the period."""
        freqs = self.frequencies()
        fold = {uid: freqs[cid] for cid, uid in self.entries.items()}
        start = self._wait_start()
        waited = 0.0 if start is None else now - start
        self._close_period(now)
        return Aggregate(reason, waited, self.snapshot(now), fold)

    def _close_period(self, now: float) -> None:
        window = self.settings.frequency_window
        if window is None:
            self._total.update(self._capped(self._current))
        elif window > 1:
            self._history = [*self._history, self._current][-(window - 1) :]
        self._current = Counter()
        self.entries = {}
        self.opened_at = None
        self.last_aggregation_at = now
        self.aggregations += 1

    # --- checkpoint -----------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain types; times stored as ages relative to `now`. `next_round` is always 0 (GSFS
        has no rounds) so every strategy's manifest carries the same keys."""
        pool = {
            "entries": [],  # pooled updates live in the pool log, not the checkpoint
            "current": dict(self._current),
            "history": [dict(p) for p in self._history],
            "total": dict(self._total),
            "opened_age_s": None if self.opened_at is None else now - self.opened_at,
            "last_aggregation_age_s": now - self.last_aggregation_at,
            "aggregations": self.aggregations,
        }
        return {"next_round": 0, "enrolled": sorted(self.enrolled), "pool": pool}

    def _load(self, data: Mapping[str, Any], now: float) -> None:
        self.last_aggregation_at = now - float(data["last_aggregation_age_s"])
        self._current = Counter({str(k): int(v) for k, v in data["current"].items()})
        self._history = [Counter({str(k): int(v) for k, v in p.items()}) for p in data["history"]]
        self._total = Counter({str(k): int(v) for k, v in data["total"].items()})
        age = data["opened_age_s"]
        self.opened_at = None if age is None else now - float(age)
        self.aggregations = int(data["aggregations"])
