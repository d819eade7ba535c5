"""How a strategy turns the updates it folded into one delta: its mean, a robust rule, or DP.

Rules: every strategy folds through a `Combiner` and asks it for the mean Δ, then applies Δ in
its own way (FedAvg adds it, FedOpt takes it as the pseudo-gradient, GSFS scales it by η_s).
The combiner streams (folds each update into the `WeightedSum` as it comes, O(model)) when
the rule allows it: rule "none", and "clip" with a fixed `clip_norm` (scale_i = min(1, C/‖Δ_i‖₂)
is known on arrival from the door's norm). Every other rule, and clipping to a multiple of the
median norm, needs all the updates at once: they are held whole in the accumulator (`keep`,
by reference) and handed to `fedllm_server.robust` at the end. A rule that cannot run on what
it was given (Krum with n < 2f + 3) refuses the aggregation as `EmptyAggregationError`: the
server keeps serving the last model. An update the rule finds non-finite (the door should have
refused it) is left out by name and the rule runs again.
Central DP (`[privacy] mode = "central"`) replaces all of that: every update is kept with
weight 1 (a weight in [0, 1] that no other client can move, docs/privacy.md), clipped to C,
summed, noised on every tensor of the model with N(0, σ²C²) from the noise source (the
kernel's CSPRNG unless a test passes a seeded one) and divided by the fixed W_exp. No clock,
I/O or logging; the only randomness is the noise source's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.privacy import NoiseSource, PrivacySettings, SystemRandom, central_noised_mean
from fedllm_server.robust import (
    ClipBound,
    Contribution,
    NonFiniteUpdateError,
    RobustParams,
    robust_aggregate,
)
from fedllm_server.strategies.base import Array, EmptyAggregationError, TensorDict
from fedllm_server.strategies.settings import RobustSettings
from fedllm_server.strategies.weighted_sum import WeightedSum

CLIPPED = "clipped"  # acc.extra: updates a fixed clip bound scaled down while folding
R = TypeVar("R")


@dataclass(frozen=True)
class Combined:
    """The mean delta to apply (float32, the combiner's own arrays) and the records."""

    delta: TensorDict
    record: dict[str, Any] = field(default_factory=dict)  # the robust rule's; {} for "none"
    privacy: dict[str, Any] = field(default_factory=dict)  # the DP mean's; {} when off


def clip_bound(settings: RobustSettings) -> ClipBound | None:
    if settings.clip_norm is not None:
        return ClipBound(norm=settings.clip_norm)
    if settings.clip_multiplier is not None:
        return ClipBound(multiplier=settings.clip_multiplier)
    return None


class Combiner:
    """The weighted mean, clipped or replaced by a robust rule, as `[robust]` says."""

    def __init__(
        self,
        settings: RobustSettings | None = None,
        privacy: PrivacySettings | None = None,
        source: NoiseSource | None = None,
    ) -> None:
        self.settings = settings or RobustSettings()
        self.privacy = privacy or PrivacySettings()
        self.source: NoiseSource = source or SystemRandom()
        self.bound = clip_bound(self.settings)
        rule = self.settings.rule
        fixed_clip = rule == "clip" and self.settings.clip_norm is not None
        self.streams = not self.privacy.central and (rule == "none" or fixed_clip)
        self.uniform = rule not in ("none", "clip") and self.settings.weights == "uniform"
        self.params = RobustParams(
            trim_fraction=self.settings.trim_fraction,
            byzantine=self.settings.byzantine,
            selected=self.settings.selected,
        )

    def fold(self, acc: WeightedSum, update: AcceptedUpdate, weight: float) -> None:
        """Fold w_i·scale_i·Δ_i now, or keep Δ_i for the rule (or the DP mean) at the end."""
        if self.privacy.central or self.uniform:
            weight = 1.0  # DP: the strategy's weight is data-dependent and unbounded
        if not self.streams:
            acc.keep(update.client_id, update.tensors, weight, update.norm)
            return
        scale = 1.0
        c = self.settings.clip_norm
        if c is not None and update.norm > c:
            scale = c / update.norm
            acc.extra[CLIPPED] = acc.extra.get(CLIPPED, 0.0) + 1.0
        acc.add(update.client_id, update.tensors, weight, update.norm, scale)

    def mean(
        self, acc: WeightedSum, scale: float = 1.0, model: Mapping[str, Array] | None = None
    ) -> Combined:
        """scale · (the aggregated Δ) from `acc` (consumed), with the records. `model`: θ^v,
        whose layout the DP noise covers (needed in central DP mode)."""
        if len(acc) == 0:
            raise EmptyAggregationError(f"no updates to aggregate (excluded {acc.excluded})")
        if self.streams:
            return Combined(acc.take_mean(scale), self._streamed_record(acc))
        contributions = [Contribution(cid, tensors, w) for cid, tensors, w in acc.kept]
        if self.privacy.central:
            if model is None:
                raise ValueError("central DP needs the model layout to noise")
            delta, privacy = self._noised(contributions, acc, model)
            return Combined(_scaled(delta, scale), {}, privacy)
        record, delta = self._robust(contributions, acc)
        return Combined(_scaled(delta, scale), record)

    def _noised(
        self, contributions: Sequence[Contribution], acc: WeightedSum, model: Mapping[str, Array]
    ) -> tuple[TensorDict, dict[str, Any]]:
        p = self.privacy
        w_exp = p.expected_weight
        assert w_exp is not None  # guaranteed by PrivacySettings
        shapes = {name: arr.shape for name, arr in model.items()}

        def noised(left: Sequence[Contribution]) -> tuple[TensorDict, dict[str, Any]]:
            delta, report = central_noised_mean(
                left, shapes, p.clip_norm, p.noise_multiplier, w_exp, self.source
            )
            return delta, {"mechanism": report.to_dict()}

        return _without_non_finite(noised, contributions, acc)

    def _streamed_record(self, acc: WeightedSum) -> dict[str, Any]:
        if self.settings.rule == "none":
            return {}
        extra = {"clip_bound": self.settings.clip_norm, CLIPPED: acc.extra.pop(CLIPPED, 0.0)}
        return {"rule": "clip", "selected": list(acc.clients), "rejected": {}, "extra": extra}

    def _robust(
        self, contributions: Sequence[Contribution], acc: WeightedSum
    ) -> tuple[dict[str, Any], TensorDict]:
        rule = "mean" if self.settings.rule == "clip" else self.settings.rule

        def run(left: Sequence[Contribution]) -> tuple[dict[str, Any], TensorDict]:
            try:
                result = robust_aggregate(rule, left, self.params, self.bound)
            except NonFiniteUpdateError:
                raise  # a ValueError too, but `_without_non_finite` handles it
            except ValueError as exc:  # Krum's n >= 2f + 3, or nobody left
                raise EmptyAggregationError(f"robust rule {self.settings.rule}: {exc}") from exc
            acc.excluded.update(result.rejected)
            return {**result.to_dict(), "rule": self.settings.rule}, result.delta

        return _without_non_finite(run, contributions, acc)


def _without_non_finite(
    aggregate: Callable[[Sequence[Contribution]], R],
    contributions: Sequence[Contribution],
    acc: WeightedSum,
) -> R:
    """`aggregate(contributions)`, leaving out (as `non_finite`) each client it refuses so."""
    left = list(contributions)
    for _ in range(len(contributions) + 1):  # each pass drops one client at most
        if not left:
            break
        try:
            return aggregate(left)
        except NonFiniteUpdateError as exc:
            acc.excluded[exc.client_id] = "non_finite"
            left = [c for c in left if c.client_id != exc.client_id]
    raise EmptyAggregationError(f"every update was non-finite (excluded {acc.excluded})")


def _scaled(delta: TensorDict, scale: float) -> TensorDict:
    for arr in delta.values():
        arr *= np.float32(scale)  # the aggregate's own float32 output, never a client's array
    return delta
