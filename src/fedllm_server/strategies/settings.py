"""Settings of the three strategies and of the server's door checks.

Rules: every choice that gsfs.md leaves open is a field here with a documented default (see
docs/strategies.md); nothing in the arithmetic is a hidden constant. Models are frozen and
reject unknown keys, so a bad value fails at start-up with the field named. Each strategy's
settings derive from `StrategySettingsBase`; `registry.StrategySettings` is their union,
discriminated by `name`, which the server's settings embed as one section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedllm_core.settings import FrozenSettings


class StrategySettingsBase(FrozenSettings):
    """What every strategy's settings have: the `name` that picks the strategy."""

    name: str


class FedAvgSettings(StrategySettingsBase):
    """FedAvg (McMahan et al. 2017): θ^{v+1} = θ^v + Σ (n_i/Σn) Δ_i."""

    name: Literal["fedavg"] = "fedavg"
    # False gives every client the same weight (1/|S|) instead of n_i/Σn.
    sample_weighting: bool = True


class FedOptSettings(StrategySettingsBase):
    """FedOpt (Reddi et al. 2021): a server optimizer over the averaged pseudo-gradient."""

    name: Literal["fedopt"] = "fedopt"
    variant: Literal["adam", "yogi", "adagrad"] = "adam"
    server_lr: float = Field(default=1e-2, gt=0, description="η_s")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="β1, first-moment decay")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="β2, 2nd-moment decay")
    tau: float = Field(default=1e-3, gt=0, description="τ, adaptivity / numerical floor")
    # gsfs.md: m and u start at 0. Reddi et al. allow u_{-1} >= τ²; kept selectable.
    initial_u: float = Field(default=0.0, ge=0, description="starting value of every u entry")
    # gsfs.md's formula has no Adam bias correction; on = η_s·√(1−β2^t)/(1−β1^t).
    bias_correction: bool = False
    sample_weighting: bool = True


class GsfsServerSettings(StrategySettingsBase):
    """GSFS server side (paper eq. 12–15) plus our documented additions."""

    name: Literal["gsfs"] = "gsfs"
    quorum_fraction: float = Field(default=0.6, gt=0, le=1, description="q in K = ceil(q·N)")
    # Where N comes from: "enrolled" = the clients the server has admitted so far (the daemon
    # passes the count); "explicit" = `federation_size` below.
    federation_size_source: Literal["enrolled", "explicit"] = "enrolled"
    federation_size: int | None = Field(default=None, ge=1, description="N when source is explicit")
    max_wait_s: float = Field(default=120.0, gt=0, description="then timeout agg.")
    # What max_wait_s is measured from: the first upload into the emptied pool, or the last
    # aggregation (server start for the first one).
    wait_from: Literal["first_arrival", "last_aggregation"] = "first_arrival"
    min_clients: int = Field(default=1, ge=1, description="for a timeout agg.")
    server_lr: float = Field(default=1.0, gt=0, description="η_s")
    # f_i counts uploads over the current period plus the W−1 previous aggregation periods.
    frequency_window: int | None = Field(default=None, ge=1, description="W; None = all history")
    # Uploads of one client counted toward f_i per aggregation period (issue 10, attack 9: 20
    # uploads before quorum gave one client α = 0.87). 1 = f_i is the number of periods in the
    # window the client uploaded in, so nobody outweighs a client present in every period;
    # 0 = every upload counts (the paper's rule, open to flooding).
    frequency_cap: int = Field(default=1, ge=0, description="uploads counted per period; 0 = all")
    sample_weighting: bool = False  # multiply α_i by n_i
    # (1+s)^(−a) with s = v − base_version; a = 0 is the paper's rule (no discount).
    staleness_exponent: float = Field(default=0.0, ge=0, description="a; 0 = off")
    # Entries staler than this are left out of an aggregation (None = no bound here; the door
    # check in ValidationSettings.max_staleness also applies).
    max_staleness: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _explicit_needs_size(self) -> GsfsServerSettings:
        if self.federation_size_source == "explicit" and self.federation_size is None:
            raise ValueError("federation_size is required when federation_size_source='explicit'")
        return self


RobustRule = Literal["none", "clip", "trimmed_mean", "median", "krum", "multi_krum"]


class RobustSettings(FrozenSettings):
    """`[robust]`: the rule every strategy aggregates its deltas with (docs/robust.md).

    "none" is the strategy's own weighted mean. "clip" is that mean over updates clipped to C
    (`clip_norm`, or `clip_multiplier` × the median norm of the aggregation); the other rules
    run after the same optional clipping. Off by default: the door's norm bound, the sample
    count cap and the GSFS frequency cap already bound what one client weighs, and the other
    rules cost honest accuracy in small federations (docs/robust.md, "Choosing a rule").
    """

    rule: RobustRule = "none"
    clip_norm: float | None = Field(default=None, gt=0, description="fixed clip bound C")
    clip_multiplier: float | None = Field(default=None, gt=0, description="C = c·median norm")
    trim_fraction: float = Field(default=0.2, ge=0, lt=0.5, description="β, trimmed_mean")
    byzantine: int = Field(default=1, ge=0, description="f, krum and multi_krum")
    selected: int | None = Field(default=None, ge=1, description="m, multi_krum; None = n − f")
    # The weights trimmed_mean, median and (multi-)Krum's average see. "uniform": every client
    # 1, so no client sets the median by its n_i or f_i (one client with 69 % of the samples
    # made the weighted median follow it, a sign-flipper included); "strategy": the strategy's
    # w_i. "clip" always keeps the strategy's weights (a norm-bounded weighted mean).
    weights: Literal["uniform", "strategy"] = "uniform"

    @model_validator(mode="after")
    def _one_clip_bound(self) -> RobustSettings:
        if self.clip_norm is not None and self.clip_multiplier is not None:
            raise ValueError("give at most one of clip_norm and clip_multiplier")
        clipped = self.clip_norm is not None or self.clip_multiplier is not None
        if self.rule == "clip" and not clipped:
            raise ValueError("rule = 'clip' needs clip_norm or clip_multiplier")
        if self.rule == "none" and clipped:
            raise ValueError("clip_norm and clip_multiplier need a rule other than 'none'")
        return self


class ValidationSettings(FrozenSettings):
    """Checks every update passes before it touches a round or the GSFS pool."""

    max_l2_norm: float | None = Field(default=None, gt=0, description="bound on ‖Δ‖₂")
    # Asynchronous strategies only; synchronous rounds require base_version == current.
    max_staleness: int = Field(default=8, ge=0, description="versions an update may lag behind")
    rate_limit_updates: int = Field(default=30, ge=1, description="bucket capacity")
    rate_limit_window_s: float = Field(default=60.0, gt=0, description="full refill time")
    replay_memory: int = Field(default=4096, ge=1, description="ids kept per client")
    # n_i is a weight: an update claiming more samples than this is refused (`unexpected`), so
    # one client can outweigh the others at most cap : Σ n_others. Set it near the largest
    # honest local training set.
    max_sample_count: int = Field(default=1_000_000, ge=1, description="largest n_i accepted")
