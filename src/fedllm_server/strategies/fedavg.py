"""FedAvg (McMahan et al. 2017) over deltas: θ^{v+1} = θ^v + Σ_i (n_i/Σ_j n_j)·Δ_i.

(or θ^v + the `[robust]` rule's aggregate of the Δ_i, through `combine.Combiner`.)

Rules: equal to Σ_i (n_i/Σn)·θ_i because every Δ_i is based on θ^v (synchronous rounds, so
`max_lag` is 0 and every tensor is required). No strategy state (`None` in and out). The weight
is known on arrival, so `SyncRounds` folds each update as it is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.privacy.settings import PrivacySettings
from fedllm_server.schedule.base import ScheduleContext
from fedllm_server.schedule.rounds import SyncRounds
from fedllm_server.strategies.base import (
    AggregationMetrics,
    Array,
    EmptyAggregationError,
    StrategyResult,
    TensorDict,
    Weighing,
    apply_step,
)
from fedllm_server.strategies.combine import Combiner
from fedllm_server.strategies.settings import FedAvgSettings, RobustSettings, ValidationSettings
from fedllm_server.strategies.weighted_sum import WeightedSum


class FedAvg:
    """Sample-weighted averaging of a round's deltas."""

    settings_type = FedAvgSettings
    name = "fedavg"
    partial_updates = False

    def __init__(
        self,
        settings: FedAvgSettings,
        robust: RobustSettings | None = None,
        privacy: PrivacySettings | None = None,
    ) -> None:
        self.settings = settings
        self.combine = Combiner(robust, privacy)

    def make_schedule(self, ctx: ScheduleContext) -> SyncRounds:
        return SyncRounds.restore(ctx)

    def max_lag(self, validation: ValidationSettings) -> int:
        return SyncRounds.max_lag

    def weight(self, update: AcceptedUpdate, at: Weighing) -> float:
        """n_i, or 1 when sample weighting is off."""
        return float(update.sample_count) if self.settings.sample_weighting else 1.0

    def fold(self, acc: WeightedSum, update: AcceptedUpdate, at: Weighing) -> None:
        self.combine.fold(acc, update, self.weight(update, at))

    def finish(
        self, global_tensors: Mapping[str, Array], acc: WeightedSum, state: None, new_version: int
    ) -> StrategyResult[None]:
        """Apply the averaged delta held in `acc` (consumed) to θ^v."""
        if len(acc) == 0:
            raise EmptyAggregationError("fedavg: no updates to aggregate")
        combined = self.combine.mean(acc, 1.0, global_tensors)
        new_global, step_norm = apply_step(global_tensors, combined.delta)
        metrics = AggregationMetrics.of(
            "fedavg", new_version, acc, step_norm, None, combined.record, combined.privacy
        )
        return StrategyResult(new_global, None, metrics)

    def initial_state(self) -> None:
        return None

    def state_to_arrays(self, state: None) -> tuple[TensorDict, dict[str, Any]]:
        return {}, {}

    def state_from_arrays(self, arrays: Mapping[str, Array], meta: Mapping[str, Any]) -> None:
        return None
