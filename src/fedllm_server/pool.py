"""The GSFS update pool: a state machine over accepted uploads that takes `now` (paper eq. 12).

Rules: one entry per client (a newer upload replaces the older one) but every accepted upload
counts toward that client's frequency f_i. Aggregate at K = ceil(q·N) distinct clients
("quorum"), or once `max_wait_s` has passed with at least `min_clients` ("timeout"). f_i is
counted over the current period plus the W−1 previous aggregation periods (all when W is None).
`take` empties the pool and closes the period. No clock, I/O or threads: the daemon calls `add`
then `due`, and arms one timer at `next_deadline`. `to_dict(now)`/`from_dict(..., now)` store
times as ages, so a checkpoint survives a restart with a different monotonic clock (downtime
does not count toward the wait).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from fedllm_server.strategies.base import ClientUpdate, EmptyAggregationError, TensorDict
from fedllm_server.strategies.settings import GsfsServerSettings

AggregationReason = Literal["quorum", "timeout"]


@dataclass(frozen=True)
class PoolEntry:
    """An accepted upload waiting for the next aggregation."""

    client_id: str
    update_id: str
    base_version: int
    arrival: float  # `now` when it was accepted
    sample_count: int
    trigger: str  # performance | gradient_norm | max_silence
    tensors: TensorDict  # Δ_i, possibly a subset of the global names
    norm: float | None = None


@dataclass(frozen=True)
class PoolBatch:
    """What `take` hands to `strategies.gsfs.aggregate`, plus facts for the metrics file."""

    reason: AggregationReason
    updates: tuple[ClientUpdate, ...]  # frequency filled in from the window
    entries: tuple[PoolEntry, ...]
    waited_s: float  # now − the moment the wait started
    frequencies: dict[str, int]


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


class GsfsPool:
    """Pool entries, upload frequencies over the window, and the wait clock."""

    def __init__(self, settings: GsfsServerSettings, now: float) -> None:
        self.settings = settings
        self.entries: dict[str, PoolEntry] = {}  # client_id -> newest entry (insertion order)
        self._current: Counter[str] = Counter()  # uploads in the open period
        self._history: list[Counter[str]] = []  # closed periods inside the window (W−1 max)
        self._total: Counter[str] = Counter()  # closed periods, when W is None
        self.opened_at: float | None = None  # first arrival into the emptied pool
        self.last_aggregation_at: float = now  # or pool creation
        self.aggregations = 0

    # --- arrivals -------------------------------------------------------------------------
    def add(self, entry: PoolEntry) -> bool:
        """Pool an accepted upload; True when it replaced the client's older entry."""
        replaced = entry.client_id in self.entries
        self.entries.pop(entry.client_id, None)  # re-insert so order follows latest arrival
        self.entries[entry.client_id] = entry
        self._current[entry.client_id] += 1
        if self.opened_at is None:
            self.opened_at = entry.arrival
        return replaced

    def frequencies(self) -> dict[str, int]:
        """f_i over the window for every client with an upload in it."""
        counts = Counter(self._current)
        for period in self._history:
            counts.update(period)
        counts.update(self._total)
        return dict(counts)

    # --- the aggregation trigger ----------------------------------------------------------
    def _wait_start(self) -> float | None:
        if self.settings.wait_from == "first_arrival":
            return self.opened_at
        return self.last_aggregation_at

    def due(self, now: float, enrolled: int) -> AggregationReason | None:
        """Why the pool should aggregate now, or None to keep waiting."""
        if len(self.entries) >= quorum_size(self.settings, enrolled):
            return "quorum"
        start = self._wait_start()
        if (
            start is not None
            and len(self.entries) >= self.settings.min_clients
            and now >= start + self.settings.max_wait_s
        ):
            return "timeout"
        return None

    def next_deadline(self, now: float, enrolled: int) -> float | None:
        """When `due` will next turn true without another arrival (None: only an arrival can)."""
        if self.due(now, enrolled) is not None:
            return now
        start = self._wait_start()
        if start is None or len(self.entries) < self.settings.min_clients:
            return None
        return start + self.settings.max_wait_s

    def take(self, now: float, reason: AggregationReason) -> PoolBatch:
        """Hand out the pooled updates with their f_i; empty the pool and close the period."""
        if not self.entries:
            raise EmptyAggregationError("gsfs pool is empty")
        freqs = self.frequencies()
        entries = tuple(self.entries.values())
        updates = tuple(_as_update(e, freqs[e.client_id]) for e in entries)
        start = self._wait_start()
        waited = 0.0 if start is None else now - start
        batch = PoolBatch(reason, updates, entries, waited, freqs)
        self._close_period(now)
        return batch

    def _close_period(self, now: float) -> None:
        window = self.settings.frequency_window
        if window is None:
            self._total.update(self._current)
        elif window > 1:
            self._history = [*self._history, self._current][-(window - 1) :]
        self._current = Counter()
        self.entries = {}
        self.opened_at = None
        self.last_aggregation_at = now
        self.aggregations += 1

    # --- checkpoint -----------------------------------------------------------------------
    def to_dict(self, now: float) -> dict[str, Any]:
        """Plain types + arrays; times stored as ages relative to `now`."""
        return {
            "entries": [_entry_to_dict(e, now) for e in self.entries.values()],
            "current": dict(self._current),
            "history": [dict(p) for p in self._history],
            "total": dict(self._total),
            "opened_age_s": None if self.opened_at is None else now - self.opened_at,
            "last_aggregation_age_s": now - self.last_aggregation_at,
            "aggregations": self.aggregations,
        }

    @classmethod
    def from_dict(
        cls, settings: GsfsServerSettings, data: Mapping[str, Any], now: float
    ) -> GsfsPool:
        pool = cls(settings, now - float(data["last_aggregation_age_s"]))
        pool.entries = {e["client_id"]: _entry_from_dict(e, now) for e in data["entries"]}
        pool._current = Counter({str(k): int(v) for k, v in data["current"].items()})
        pool._history = [Counter({str(k): int(v) for k, v in p.items()}) for p in data["history"]]
        pool._total = Counter({str(k): int(v) for k, v in data["total"].items()})
        age = data["opened_age_s"]
        pool.opened_at = None if age is None else now - float(age)
        pool.aggregations = int(data["aggregations"])
        return pool


def _as_update(entry: PoolEntry, frequency: int) -> ClientUpdate:
    return ClientUpdate(
        client_id=entry.client_id,
        tensors=entry.tensors,
        sample_count=entry.sample_count,
        base_version=entry.base_version,
        frequency=frequency,
        norm=entry.norm,
    )


def _entry_to_dict(entry: PoolEntry, now: float) -> dict[str, Any]:
    return {
        "client_id": entry.client_id,
        "update_id": entry.update_id,
        "base_version": entry.base_version,
        "age_s": now - entry.arrival,
        "sample_count": entry.sample_count,
        "trigger": entry.trigger,
        "tensors": dict(entry.tensors),
        "norm": entry.norm,
    }


def _entry_from_dict(data: Mapping[str, Any], now: float) -> PoolEntry:
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in data["tensors"].items()}
    return PoolEntry(
        client_id=str(data["client_id"]),
        update_id=str(data["update_id"]),
        base_version=int(data["base_version"]),
        arrival=now - float(data["age_s"]),
        sample_count=int(data["sample_count"]),
        trigger=str(data["trigger"]),
        tensors=tensors,
        norm=None if data["norm"] is None else float(data["norm"]),
    )
