"""GSFS aggregation (paper eq. 13–14): θ^{v+1} = θ^v + η_s · Σ_{i∈S} α_i · U_i.

Rules: α_i = w_i / Σ_{j∈S} w_j with w_i = f_i (the client's upload count over the frequency
window, from the schedule), times n_i when `sample_weighting`, times (1+s_i)^(−a) with
s_i = v − base_i when `staleness_exponent` a > 0. f_i is known only when the pool aggregates,
so `GsfsSchedule` holds the pooled updates and folds them all then (a `[robust]` rule replaces
the weighted mean, with these w_i as its weights). Partial updates: each
tensor is normalised over the clients that sent it, so a tensor sent by one client moves by
η_s·U_i for that tensor. No strategy state here: the frequencies live in the schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.privacy.settings import PrivacySettings
from fedllm_server.schedule.base import ScheduleContext
from fedllm_server.schedule.gsfs import GsfsSchedule
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
from fedllm_server.strategies.settings import GsfsServerSettings, RobustSettings, ValidationSettings
from fedllm_server.strategies.weighted_sum import WeightedSum

WORST = "max_staleness_included"


def staleness(update: AcceptedUpdate, current_version: int) -> int:
    """s_i = v − base_i (0 for an update based on the current global model)."""
    return max(0, current_version - update.base_version)


class Gsfs:
    """The paper's frequency-weighted asynchronous aggregation of the pooled updates."""

    settings_type = GsfsServerSettings
    name = "gsfs"
    partial_updates = True

    def __init__(
        self,
        settings: GsfsServerSettings,
        robust: RobustSettings | None = None,
        privacy: PrivacySettings | None = None,
    ) -> None:
        self.settings = settings
        self.combine = Combiner(robust, privacy)

    def make_schedule(self, ctx: ScheduleContext) -> GsfsSchedule:
        return GsfsSchedule.restore(self.settings, ctx)

    def max_lag(self, validation: ValidationSettings) -> int:
        return validation.max_staleness

    def weight(self, update: AcceptedUpdate, at: Weighing) -> float:
        """Unnormalised w_i = f_i · [n_i] · (1+s_i)^(−a)."""
        w = float(at.frequency)
        if self.settings.sample_weighting:
            w *= update.sample_count
        if self.settings.staleness_exponent > 0:
            w *= (1.0 + staleness(update, at.version)) ** (-self.settings.staleness_exponent)
        return w

    def _exclusion(self, update: AcceptedUpdate, at: Weighing) -> str:
        bound = self.settings.max_staleness
        if bound is not None and staleness(update, at.version) > bound:
            return "too_stale"
        if at.frequency < 1:
            return "zero_frequency"
        return ""

    def fold(self, acc: WeightedSum, update: AcceptedUpdate, at: Weighing) -> None:
        reason = self._exclusion(update, at)
        if reason:
            acc.exclude(update.client_id, reason)
            return
        self.combine.fold(acc, update, self.weight(update, at))
        acc.extra[WORST] = max(acc.extra.get(WORST, 0.0), float(staleness(update, at.version)))

    def finish(
        self, global_tensors: Mapping[str, Array], acc: WeightedSum, state: None, new_version: int
    ) -> StrategyResult[None]:
        """One GSFS aggregation of the folded pool into version `new_version`."""
        if len(acc) == 0:
            detail = f"gsfs: no updates left to aggregate (excluded {acc.excluded})"
            raise EmptyAggregationError(detail)
        combined = self.combine.mean(acc, self.settings.server_lr, global_tensors)
        new_global, step_norm = apply_step(global_tensors, combined.delta)
        extra = {WORST: acc.extra.get(WORST, 0.0)}
        metrics = AggregationMetrics.of(
            "gsfs", new_version, acc, step_norm, extra, combined.record, combined.privacy
        )
        return StrategyResult(new_global, None, metrics)

    def initial_state(self) -> None:
        return None

    def state_to_arrays(self, state: None) -> tuple[TensorDict, dict[str, Any]]:
        return {}, {}

    def state_from_arrays(self, arrays: Mapping[str, Array], meta: Mapping[str, Any]) -> None:
        return None
