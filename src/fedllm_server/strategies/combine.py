"""How a strategy turns the updates it folded into one delta: its weighted mean or a robust rule.

Rules: every strategy folds through a `Combiner` and asks it for the mean Δ, then applies Δ in
its own way (FedAvg adds it, FedOpt takes it as the pseudo-gradient, GSFS scales it by η_s).
The combiner streams (folds each update into the `WeightedSum` as it comes, O(model)) when
the rule allows it: rule "none", and "clip" with a fixed `clip_norm` (scale_i = min(1, C/‖Δ_i‖₂)
is known on arrival from the door's norm). Every other rule, and clipping to a multiple of the
median norm, needs all the updates at once: they are held whole in the accumulator (`keep`,
by reference) and handed to `fedllm_server.robust` at the end. A rule that cannot run on what
it was given (Krum with n < 2f + 3) refuses the aggregation as `EmptyAggregationError`: the
server keeps serving the last model. An update the rule finds non-finite (the door should have
refused it) is left out by name and the rule runs again. Pure: no clock, I/O or logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.robust import (
    ClipBound,
    Contribution,
    NonFiniteUpdateError,
    RobustParams,
    robust_aggregate,
)
from fedllm_server.strategies.base import EmptyAggregationError, TensorDict
from fedllm_server.strategies.settings import RobustSettings
from fedllm_server.strategies.weighted_sum import WeightedSum

CLIPPED = "clipped"  # acc.extra: updates a fixed clip bound scaled down while folding


@dataclass(frozen=True)
class Combined:
    """The mean delta to apply (float32, the combiner's own arrays) and the rule's record."""

    delta: TensorDict
    record: dict[str, Any] = field(default_factory=dict)  # {} for rule "none"


def clip_bound(settings: RobustSettings) -> ClipBound | None:
    if settings.clip_norm is not None:
        return ClipBound(norm=settings.clip_norm)
    if settings.clip_multiplier is not None:
        return ClipBound(multiplier=settings.clip_multiplier)
    return None


class Combiner:
    """The weighted mean, clipped or replaced by a robust rule, as `[robust]` says."""

    def __init__(self, settings: RobustSettings | None = None) -> None:
        self.settings = settings or RobustSettings()
        self.bound = clip_bound(self.settings)
        rule = self.settings.rule
        self.streams = rule == "none" or (rule == "clip" and self.settings.clip_norm is not None)
        self.params = RobustParams(
            trim_fraction=self.settings.trim_fraction,
            byzantine=self.settings.byzantine,
            selected=self.settings.selected,
        )

    def fold(self, acc: WeightedSum, update: AcceptedUpdate, weight: float) -> None:
        """Fold w_i·scale_i·Δ_i now, or keep Δ_i for the rule at the end."""
        if not self.streams:
            acc.keep(update.client_id, update.tensors, weight, update.norm)
            return
        scale = 1.0
        c = self.settings.clip_norm
        if c is not None and update.norm > c:
            scale = c / update.norm
            acc.extra[CLIPPED] = acc.extra.get(CLIPPED, 0.0) + 1.0
        acc.add(update.client_id, update.tensors, weight, update.norm, scale)

    def mean(self, acc: WeightedSum, scale: float = 1.0) -> Combined:
        """scale · (the aggregated Δ) from `acc` (consumed); the rule's record beside it."""
        if len(acc) == 0:
            raise EmptyAggregationError(f"no updates to aggregate (excluded {acc.excluded})")
        if self.streams:
            return Combined(acc.take_mean(scale), self._streamed_record(acc))
        contributions = [Contribution(cid, tensors, w) for cid, tensors, w in acc.kept]
        record, delta = self._robust(contributions, acc)
        for arr in delta.values():
            arr *= np.float32(scale)  # the rule's own float32 output, never a client's array
        return Combined(delta, record)

    def _streamed_record(self, acc: WeightedSum) -> dict[str, Any]:
        if self.settings.rule == "none":
            return {}
        extra = {"clip_bound": self.settings.clip_norm, CLIPPED: acc.extra.pop(CLIPPED, 0.0)}
        return {"rule": "clip", "selected": list(acc.clients), "rejected": {}, "extra": extra}

    def _robust(
        self, contributions: Sequence[Contribution], acc: WeightedSum
    ) -> tuple[dict[str, Any], TensorDict]:
        rule = "mean" if self.settings.rule == "clip" else self.settings.rule
        left = list(contributions)
        for _ in range(len(contributions) + 1):  # each pass drops one non-finite client at most
            try:
                result = robust_aggregate(rule, left, self.params, self.bound)
            except NonFiniteUpdateError as exc:
                acc.excluded[exc.client_id] = "non_finite"
                left = [c for c in left if c.client_id != exc.client_id]
                continue
            except ValueError as exc:  # Krum's n >= 2f + 3, or nobody left
                raise EmptyAggregationError(f"robust rule {self.settings.rule}: {exc}") from exc
            acc.excluded.update(result.rejected)
            return {**result.to_dict(), "rule": self.settings.rule}, result.delta
        raise EmptyAggregationError(f"robust rule {self.settings.rule}: every update non-finite")
