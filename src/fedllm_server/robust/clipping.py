"""Norm clipping: every update scaled to at most C in L2 over all the tensors it carries.

Rules: scale_i = min(1, C / ‖Δ_i‖₂), so a clipped update keeps its direction and an update
already inside the ball is untouched (a zero update stays zero). C is either given or derived
from the norms observed in this aggregation: C = c · median_i ‖Δ_i‖₂ (unweighted median, the
mean of the two middle norms for an even count). The median moves only when more than half the
updates are inflated, so a minority of attackers cannot raise the bound they are clipped to.
Clipping only sets each member's scale: O(1) extra memory, no copy of any update; the rule that
runs after it reads scale_i · Δ_i.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fedllm_server.robust.base import Member, RobustParams, RuleOutput, weighted_mean


@dataclass(frozen=True)
class ClipBound:
    """C itself (`norm`), or C = `multiplier` · median of the observed norms; exactly one."""

    norm: float | None = None
    multiplier: float | None = None

    def __post_init__(self) -> None:
        if (self.norm is None) == (self.multiplier is None):
            raise ValueError("ClipBound: give exactly one of norm and multiplier")
        value = self.norm if self.norm is not None else self.multiplier
        if value is None or not value > 0:
            raise ValueError(f"ClipBound: the bound must be > 0, got {value}")

    def resolve(self, norms: Sequence[float]) -> float:
        """C for this aggregation (norms: the members' ‖Δ_i‖₂)."""
        if self.norm is not None:
            return self.norm
        assert self.multiplier is not None
        return self.multiplier * statistics.median(norms)


def clip(members: Sequence[Member], bound: ClipBound) -> tuple[list[Member], float]:
    """Members with scale_i = min(1, C/‖Δ_i‖₂) set, and C. A derived C is 0 when the median
    norm is 0: the (minority of) non-zero updates are then scaled to zero."""
    if not members:
        return [], 0.0
    c = bound.resolve([m.norm for m in members])
    out = [replace(m, scale=_scale(m.norm, c)) for m in members]
    return out, c


def _scale(norm: float, c: float) -> float:
    return 1.0 if norm <= c else c / norm


def mean(members: Sequence[Member], params: RobustParams) -> RuleOutput:
    """Plain weighted mean per tensor over the clients that sent it (with clipping before it:
    the norm-bounded mean of Sun et al. 2019). The baseline every other rule is measured
    against; it resists nothing by itself."""
    return RuleOutput(weighted_mean(members), tuple(m.client_id for m in members))
