"""What a schedule asks the server to do: the only way a schedule's decisions leave it.

Rules: actions are frozen data, carried out by `fedllm_server.scheduler.carry_out` in list
order. A schedule never touches tensors, sockets or clocks; it names updates by `update_id`
and lets the engine hold, fold and drop their tensors. `Fold` and `Drop` are submitted to the
engine thread in the order they are returned, before any later `Aggregate`, so the engine
always holds at least the updates a schedule refers to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StartRound:
    """Send TrainRequest(round, <current version>, local_steps, deadline_s) to `clients`."""

    round: int
    clients: tuple[str, ...]
    local_steps: int
    deadline_s: float


@dataclass(frozen=True)
class CloseRound:
    """A synchronous round is over (log it, write its metrics record)."""

    round: int
    reason: str  # complete | deadline | dropouts
    contributed: tuple[str, ...]
    stragglers: tuple[str, ...]  # selected, still connected, did not report in time
    dropouts: tuple[str, ...]  # selected, disconnected before reporting
    started_at: float
    closed_at: float


@dataclass(frozen=True)
class Fold:
    """Fold these held updates into the running sum now: update_id -> f_i (1 when unused)."""

    weights: Mapping[str, int]


@dataclass(frozen=True)
class Drop:
    """These held updates were superseded (a newer upload from the same client): forget them."""

    update_ids: tuple[str, ...]


@dataclass(frozen=True)
class Aggregate:
    """Fold `fold` (update_id -> f_i), apply the sum, checkpoint `durable`, publish."""

    reason: str  # complete | deadline | dropouts (rounds), quorum | timeout (GSFS)
    waited_s: float  # round duration, or GSFS time from the wait start to the trigger
    durable: Mapping[str, Any]  # the schedule's state for the checkpoint (plain types)
    fold: Mapping[str, int] = field(default_factory=dict)


Action = StartRound | CloseRound | Fold | Drop | Aggregate
