"""Robust aggregation in update (delta) space: clipping, trimmed mean, median, (multi-)Krum.

Rules: pure functions over a list of `Contribution`s (client id, delta possibly carrying a subset
of the tensor names, weight); the caller's arrays are never written, nothing is logged or
sampled. `robust_aggregate` validates (non-finite updates raise `NonFiniteUpdateError`), clips
when asked, then runs one rule from `RULES`; a new rule is one module plus one line there.
It returns the aggregated delta (the strategy applies it: η_s, a server optimizer) and the
record of who was kept, trimmed or selected. Formulas, memory and defaults: docs/robust.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedllm_server.robust.base import (
    Contribution,
    Member,
    NonFiniteUpdateError,
    RobustParams,
    RobustResult,
    RuleOutput,
    finite_norm,
    prepare,
)
from fedllm_server.robust.clipping import ClipBound, clip, mean
from fedllm_server.robust.coordinate import median, trimmed_mean
from fedllm_server.robust.krum import krum, multi_krum, squared_distances

Rule = Callable[[Sequence[Member], RobustParams], RuleOutput]

RULES: dict[str, Rule] = {
    "mean": mean,
    "trimmed_mean": trimmed_mean,
    "median": median,
    "krum": krum,
    "multi_krum": multi_krum,
}


class EmptyRobustAggregationError(ValueError):
    """No update with a positive weight was left to aggregate."""


def robust_aggregate(
    rule: str,
    contributions: Sequence[Contribution],
    params: RobustParams | None = None,
    clip_bound: ClipBound | None = None,
) -> RobustResult:
    """Validate, clip (when `clip_bound` is given), then aggregate with `RULES[rule]`."""
    if rule not in RULES:
        raise ValueError(f"unknown robust rule {rule!r}; known: {sorted(RULES)}")
    members, rejected = prepare(contributions)
    if not members:
        raise EmptyRobustAggregationError(f"{rule}: no updates to aggregate ({rejected})")
    extra: dict[str, float] = {}
    if clip_bound is not None:
        members, extra["clip_bound"] = clip(members, clip_bound)
        extra["clipped"] = float(sum(m.scale < 1.0 for m in members))
    out = RULES[rule](members, params or RobustParams())
    scores = {m.client_id: {"norm": m.norm, "scale": m.scale} for m in members}
    for cid, rule_scores in out.scores.items():
        scores[cid].update(rule_scores)
    tensor_clients: dict[str, int] = {}
    for m in members:
        for name in m.contribution.tensors:
            tensor_clients[name] = tensor_clients.get(name, 0) + 1
    return RobustResult(
        rule=rule,
        delta=out.delta,
        selected=out.selected,
        rejected={**rejected, **out.rejected},
        scores=scores,
        tensor_clients=tensor_clients,
        extra={**extra, **out.extra},
    )


__all__ = [
    "RULES",
    "ClipBound",
    "Contribution",
    "EmptyRobustAggregationError",
    "Member",
    "NonFiniteUpdateError",
    "RobustParams",
    "RobustResult",
    "Rule",
    "RuleOutput",
    "clip",
    "finite_norm",
    "krum",
    "median",
    "multi_krum",
    "prepare",
    "robust_aggregate",
    "squared_distances",
    "trimmed_mean",
]
