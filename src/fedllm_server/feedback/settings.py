"""`[feedback]`: the adaptive feedback loop's arms, reward and exploration (docs/feedback.md)."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedllm_core.settings import FrozenSettings


class FeedbackSettings(FrozenSettings):
    """Off by default: GSFS runs the paper's fixed thresholds unless this is enabled."""

    enabled: bool = False
    # The arms are every (perf_delta, kappa) pair; the first pair is tried first, so put the
    # fixed-threshold default (the client's own [trigger] values) first.
    perf_deltas: tuple[float, ...] = (0.01, 0.03, 0.06)
    kappas: tuple[float, ...] = (2.0, 4.0)
    # r = ΔF1_val − cost_weight · (bytes uploaded in the period / (N · model bytes)): one full
    # upload by every client in a period costs `cost_weight` macro-F1 points of reward.
    cost_weight: float = Field(default=0.02, ge=0)
    exploration: float = Field(default=0.05, ge=0, description="c in the UCB bonus")
    window: int = Field(default=8, ge=1, description="rewards per arm its mean is taken over")

    @model_validator(mode="after")
    def _arms_valid(self) -> FeedbackSettings:
        if not self.perf_deltas or not self.kappas:
            raise ValueError("perf_deltas and kappas each need at least one value")
        if any(d < 0 or d > 1 for d in self.perf_deltas):
            raise ValueError("perf_deltas must lie in [0, 1] (a change of macro-F1)")
        if any(k < 0 or k > 100 for k in self.kappas):
            raise ValueError("kappas must lie in [0, 100]")
        return self
