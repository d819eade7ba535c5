"""The Schedule contract: when rounds start and end, when the pool aggregates.

Rules: a schedule is a state machine on the event loop over client ids and update ids; it
never holds a tensor, reads a clock (time is the `now` argument, monotonic seconds) or does
I/O. Its decisions come out as `actions`. The server calls `joined`/`left` as clients come
and go, `expects` before judging an update (True reserves the client's place), then exactly
one of `accepted`/`refused`, `poll(now)` whenever it wakes, and sleeps until `next_deadline`.
`snapshot(now)` is the schedule's part of the checkpoint (times as ages, plain types);
`replayed` brings back the pool log's updates after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.schedule.actions import Action


@dataclass(frozen=True)
class RoundConfig:
    """The shape of a synchronous round (from `ServerSettings.rounds`)."""

    fraction: float
    min_clients: int
    local_steps: int
    deadline_s: float


@dataclass(frozen=True)
class ScheduleContext:
    """What a strategy needs to build (or restore) its schedule at start-up."""

    rounds: RoundConfig
    seed: int  # the server seed (client selection)
    max_staleness: int  # the door's bound on an asynchronous update's lag
    version: int  # the global version the server resumes from
    meta: Mapping[str, Any]  # the checkpoint's strategy_meta ({} on a first start)
    now: float


class Schedule(Protocol):
    """Decides when the federation acts; `SyncRounds` and `GsfsSchedule` implement it."""

    max_lag: int  # versions an accepted update may lag behind the current one

    def joined(self, client_id: str, now: float) -> list[Action]: ...

    def left(self, client_id: str) -> None: ...

    def expects(self, client_id: str, round_number: int) -> bool: ...

    def accepted(self, update: AcceptedUpdate, now: float) -> list[Action]: ...

    def refused(self, client_id: str) -> None: ...

    def replayed(self, updates: Sequence[AcceptedUpdate], now: float) -> list[Action]: ...

    def poll(self, now: float) -> list[Action]: ...

    def next_deadline(self, now: float) -> float | None: ...

    def aggregated(self, now: float) -> None: ...

    def snapshot(self, now: float) -> dict[str, Any]: ...


def enrolled_from(meta: Mapping[str, Any]) -> set[str]:
    """Every client admitted since the federation began, as the checkpoint recorded it."""
    return {str(cid) for cid in meta.get("enrolled", [])}
