"""Schedules: when the federation starts and closes rounds or aggregates the GSFS pool.

`SyncRounds` (FedAvg, FedOpt) and `GsfsSchedule` (GSFS) implement `Schedule`; a strategy
builds its own with `Strategy.make_schedule`. Pure state machines over ids that take `now`.
"""

from fedllm_server.schedule.actions import (
    Action,
    Aggregate,
    CloseRound,
    Drop,
    Fold,
    StartRound,
)
from fedllm_server.schedule.base import RoundConfig, Schedule, ScheduleContext

__all__ = [
    "Action",
    "Aggregate",
    "CloseRound",
    "Drop",
    "Fold",
    "RoundConfig",
    "Schedule",
    "ScheduleContext",
    "StartRound",
]
