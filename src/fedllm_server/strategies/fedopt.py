"""FedOpt (Reddi et al. 2021): FedAdam, FedYogi, FedAdagrad over the averaged pseudo-gradient.

Rules (gsfs.md): Δ = Σ_i (n_i/n)·Δ_i (or the `[robust]` rule's aggregate of the Δ_i);
m ← β1·m + (1−β1)·Δ; u by the variant's rule; θ^{v+1} = θ^v + η_s·m/(√u + τ). The variants
differ only in `_next_u`. State (m, u, step) goes in and comes out explicitly; the input
state's arrays are never written, so the caller may checkpoint it while the next aggregation
runs. A tensor no update carried is left untouched, with its m and u. Synchronous rounds like
FedAvg (folded on arrival, every tensor required).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
from fedllm_server.strategies.settings import FedOptSettings, RobustSettings, ValidationSettings
from fedllm_server.strategies.weighted_sum import WeightedSum


@dataclass(frozen=True)
class FedOptState:
    """Server optimizer state; m and u are float32 like the model, missing = initial value."""

    m: TensorDict = field(default_factory=dict)
    u: TensorDict = field(default_factory=dict)
    step: int = 0  # aggregations applied so far

    def to_dict(self) -> dict[str, Any]:
        return {"m": dict(self.m), "u": dict(self.u), "step": self.step}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FedOptState:
        m = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in data["m"].items()}
        u = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in data["u"].items()}
        return cls(m=m, u=u, step=int(data["step"]))


def _next_u(u: Array, sq: Array, settings: FedOptSettings) -> Array:
    """The one rule that tells the variants apart; sq = Δ² (shape of the tensor)."""
    b2 = np.float32(settings.beta2)
    if settings.variant == "adam":
        return u * b2 + (np.float32(1) - b2) * sq  # u ← β2·u + (1−β2)·Δ²
    if settings.variant == "yogi":
        return u - (np.float32(1) - b2) * sq * np.sign(u - sq)  # u ← u − (1−β2)·Δ²·sign(u−Δ²)
    return u + sq  # adagrad: u ← u + Δ²


def _lr(settings: FedOptSettings, step: int) -> float:
    """η_s, or Adam's bias-corrected η_s·√(1−β2^t)/(1−β1^t) when enabled (t = step, 1-based)."""
    if not settings.bias_correction:
        return settings.server_lr
    corr = 1.0 - settings.beta1**step
    if settings.variant != "adagrad":
        return settings.server_lr * math.sqrt(1.0 - settings.beta2**step) / corr
    return settings.server_lr / corr


def _optimizer_step(
    delta: Array, m: Array | None, u: Array | None, settings: FedOptSettings, lr: float
) -> tuple[Array, Array]:
    """Update one tensor's moments and overwrite `delta` with the server step; returns m', u'."""
    b1 = np.float32(settings.beta1)
    m_prev = np.zeros_like(delta) if m is None else m
    u_prev = np.full_like(delta, settings.initial_u) if u is None else u
    m_new = m_prev * b1 + (np.float32(1) - b1) * delta  # (shape) float32
    sq = np.multiply(delta, delta)  # Δ² (shape)
    u_new = _next_u(u_prev, sq, settings).astype(np.float32, copy=False)
    np.sqrt(u_new, out=sq)  # reuse Δ²'s buffer for √u' + τ
    sq += np.float32(settings.tau)
    np.divide(m_new, sq, out=delta)
    delta *= np.float32(lr)
    return m_new, u_new


class FedOpt:
    """A server optimizer step (adam, yogi or adagrad) on the averaged delta of a round."""

    settings_type = FedOptSettings
    name = "fedopt"
    partial_updates = False

    def __init__(
        self,
        settings: FedOptSettings,
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
        self,
        global_tensors: Mapping[str, Array],
        acc: WeightedSum,
        state: FedOptState,
        new_version: int,
    ) -> StrategyResult[FedOptState]:
        """Apply one server-optimizer step from the pseudo-gradient held in `acc` (consumed)."""
        if len(acc) == 0:
            raise EmptyAggregationError("fedopt: no updates to aggregate")
        settings = self.settings
        step_count = state.step + 1
        lr = _lr(settings, step_count)
        combined = self.combine.mean(acc, 1.0, global_tensors)
        steps = combined.delta  # Δ per tensor; overwritten in place with the server step
        m_out, u_out = dict(state.m), dict(state.u)
        for name, delta in steps.items():
            m_out[name], u_out[name] = _optimizer_step(
                delta, state.m.get(name), state.u.get(name), settings, lr
            )
        new_global, step_norm = apply_step(global_tensors, steps)
        extra = {"server_lr": lr, "optimizer_step": float(step_count)}
        name = f"fedopt-{settings.variant}"
        metrics = AggregationMetrics.of(
            name, new_version, acc, step_norm, extra, combined.record, combined.privacy
        )
        return StrategyResult(new_global, FedOptState(m_out, u_out, step_count), metrics)

    def initial_state(self) -> FedOptState:
        return FedOptState()

    def state_to_arrays(self, state: FedOptState) -> tuple[TensorDict, dict[str, Any]]:
        """m and u as `m/<name>`, `u/<name>` arrays; the step count as `fedopt_step`."""
        arrays = {f"m/{k}": v for k, v in state.m.items()}
        arrays.update({f"u/{k}": v for k, v in state.u.items()})
        return arrays, {"fedopt_step": state.step}

    def state_from_arrays(
        self, arrays: Mapping[str, Array], meta: Mapping[str, Any]
    ) -> FedOptState:
        if "fedopt_step" not in meta:
            return FedOptState()
        m = {k[2:]: np.ascontiguousarray(v) for k, v in arrays.items() if k.startswith("m/")}
        u = {k[2:]: np.ascontiguousarray(v) for k, v in arrays.items() if k.startswith("u/")}
        return FedOptState(m=m, u=u, step=int(meta["fedopt_step"]))
