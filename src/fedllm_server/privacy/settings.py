"""`[privacy]`: DP-FedAvg, central (on the server) or local (on each client); off by default.

Rules, central: the server clips every update to `clip_norm` C, weighs each client 1, sums, adds
N(0, σ²C²) on every tensor from the kernel's CSPRNG and divides by the fixed `expected_weight`
W_exp (never by the observed count: docs/privacy.md, "Mechanisms"). W_exp has no default on
purpose: it must be chosen before the run, from the schedule (the GSFS quorum K, or the
clients a round selects), not from who turned up. The accountant counts every enrolled client
as eligible (q = 1) in every aggregation and refuses one that would pass `epsilon_budget`.
Local: every client privatises its own upload with the same C and σ (its `[privacy]` says
mode = "local" with the same values; the Hello fingerprint carries them, so a mismatch is
refused); the server records one (σ, q = 1) event per accepted upload and refuses an upload
that would pass `epsilon_budget`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedllm_core.privacy import LocalDp
from fedllm_core.settings import FrozenSettings
from fedllm_server.privacy.accountant import AccountantConfig


class PrivacySettings(FrozenSettings):
    """Client-level DP of the released models (docs/privacy.md)."""

    mode: Literal["off", "central", "local"] = "off"
    clip_norm: float = Field(default=1.0, gt=0, description="C, the L2 bound of one update")
    noise_multiplier: float = Field(default=1.0, gt=0, description="σ: noise std = σ·C")
    expected_weight: float | None = Field(
        default=None, gt=0, description="W_exp, the fixed denominator (required when central)"
    )
    target_delta: float = Field(default=1e-6, gt=0, lt=1, description="δ")
    epsilon_budget: float | None = Field(
        default=None, gt=0, description="refuse what would pass this ε; None = report only"
    )
    method: Literal["pld", "rdp"] = "pld"  # the accountant the budget is checked with

    @model_validator(mode="after")
    def _central_needs_denominator(self) -> PrivacySettings:
        if self.mode == "central" and self.expected_weight is None:
            raise ValueError("privacy.mode = 'central' needs expected_weight (W_exp)")
        return self

    @property
    def central(self) -> bool:
        return self.mode == "central"

    @property
    def local(self) -> bool:
        return self.mode == "local"

    def local_dp(self) -> LocalDp | None:
        """What clients must privatise with (None unless mode = "local")."""
        return LocalDp(self.clip_norm, self.noise_multiplier) if self.local else None

    def accountant_config(self) -> AccountantConfig:
        return AccountantConfig(self.target_delta, self.epsilon_budget, self.method)
