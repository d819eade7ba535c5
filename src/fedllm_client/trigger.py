"""The GSFS client trigger policy (gsfs.md, paper eq. 7–11): a pure function of local state.

Rules: `decide(state, observation, settings) -> (Decision, new state)`; no clock, I/O, torch or
hidden state. The client calls it at every check (`is_check_step`), passing per-layer norms and,
when it evaluated one, the metric M_t. Order of precedence: minimum gap (suppresses everything),
performance |M_t − M_ref| > δ, gradient norm g_ℓ > τ_ℓ (after warm-up), max silence. Statistics
are updated on every observation, firing or not. The new state assumes the upload happens; a
client whose upload fails keeps its old state. `on_broadcast` resets the reference point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import Field, model_validator

from fedllm_core.settings import FrozenSettings
from fedllm_proto.messages import TriggerReason


class TriggerSettings(FrozenSettings):
    """Client-side GSFS trigger; every default is documented in docs/strategies.md."""

    check_every: int = Field(default=10, ge=1, description="local steps between trigger checks")
    metric: Literal["f1_macro", "accuracy", "loss"] = "f1_macro"
    perf_delta: float = Field(default=0.01, ge=0, description="δ_perf")
    beta: float = Field(default=0.9, gt=0, lt=1, description="β, EMA smoothing")
    kappa: float = Field(default=2.0, ge=0, description="κ in τ_ℓ = μ_ℓ + κ·s_ℓ")
    # mad: s ← β·s + (1−β)·|g−μ| (the paper's); ema_var: v ← β·v + (1−β)·(g−μ)², s = √v.
    deviation: Literal["mad", "ema_var"] = "mad"
    # updated: μ and s include g before the test (gsfs.md's order); previous: test g against
    # the statistics of earlier observations only.
    threshold_from: Literal["updated", "previous"] = "updated"
    warmup_steps: int = Field(default=50, ge=0, description="no gradient trigger before this step")
    max_silence_steps: int | None = Field(default=500, ge=1, description="force upload; None=off")
    min_steps_between_uploads: int = Field(default=10, ge=0, description="suppress uploads closer")
    # gradient: ‖∇_ℓ‖₂ of the step at the check; parameter_change: ‖θ_ℓ − θ_ℓ(last check)‖₂.
    norm_source: Literal["gradient", "parameter_change"] = "gradient"
    reset_stats_on_broadcast: bool = False  # True restarts μ, s and the warm-up
    partial_updates: bool = False  # send only significant layers (paper's partial update)
    # A layer is significant when ‖Δ_ℓ‖/‖θ_ℓ‖ ≥ this; the largest one is always sent.
    partial_min_relative_change: float = Field(default=1e-3, ge=0)

    @model_validator(mode="after")
    def _silence_after_gap(self) -> TriggerSettings:
        silence = self.max_silence_steps
        if silence is not None and silence < self.min_steps_between_uploads:
            raise ValueError("max_silence_steps must be >= min_steps_between_uploads")
        return self

    @model_validator(mode="after")
    def _gradient_trigger_reachable(self) -> TriggerSettings:
        # With g folded into μ and s before the test, g > τ reduces to
        # (g − μ)·(1 − κ(1−β)) > κ·s (mad) or needs κ·√(1−β) < 1 (ema_var): otherwise the
        # gradient trigger could never fire, which is a configuration error, not a policy.
        if self.threshold_from != "updated":
            return self
        reach = self.kappa * (1 - self.beta)
        if self.deviation == "ema_var":
            reach = self.kappa * math.sqrt(1 - self.beta)
        if reach >= 1:
            raise ValueError(
                f"kappa={self.kappa}, beta={self.beta}: the gradient trigger can never fire "
                "with threshold_from='updated' (need kappa·(1−beta) < 1 for mad, "
                "kappa·√(1−beta) < 1 for ema_var)"
            )
        return self


# The wire's enum: a Decision's reason goes into Update.trigger as is (never ROUND here).
FireReason = TriggerReason


@dataclass(frozen=True)
class Observation:
    step: int  # local optimizer steps taken so far (monotonic across broadcasts)
    layer_norms: Mapping[str, float]  # g_ℓ per layer (source per settings.norm_source)
    metric: float | None = None  # M_t on V_i, when evaluated at this check


@dataclass(frozen=True)
class Decision:
    fire: bool
    reason: FireReason | None = None
    layer: str | None = None  # the layer whose norm crossed its threshold
    suppressed: str | None = None  # "min_gap" when a trigger fired but was held back
    values: dict[str, float] = field(default_factory=dict)  # M_t, M_ref, g, τ, ...


@dataclass(frozen=True)
class TriggerState:
    mu: Mapping[str, float] = field(default_factory=dict)  # μ_ℓ
    dev: Mapping[str, float] = field(default_factory=dict)  # s_ℓ (mad) or v_ℓ (ema_var)
    m_ref: float | None = None  # M at the last reference point
    last_upload_step: int = 0  # or the step training started
    last_check_step: int = 0
    stats_since_step: int = 0  # warm-up counts from here

    def to_dict(self) -> dict[str, Any]:
        return {
            "mu": dict(self.mu),
            "dev": dict(self.dev),
            "m_ref": self.m_ref,
            "last_upload_step": self.last_upload_step,
            "last_check_step": self.last_check_step,
            "stats_since_step": self.stats_since_step,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TriggerState:
        m_ref = data["m_ref"]
        return cls(
            mu={str(k): float(v) for k, v in data["mu"].items()},
            dev={str(k): float(v) for k, v in data["dev"].items()},
            m_ref=None if m_ref is None else float(m_ref),
            last_upload_step=int(data["last_upload_step"]),
            last_check_step=int(data["last_check_step"]),
            stats_since_step=int(data["stats_since_step"]),
        )


def initial_state(step: int = 0, metric: float | None = None) -> TriggerState:
    """State when training starts at `step` from a model whose metric on V_i is `metric`."""
    return TriggerState(
        m_ref=metric, last_upload_step=step, last_check_step=step, stats_since_step=step
    )


def is_check_step(state: TriggerState, step: int, settings: TriggerSettings) -> bool:
    """True every `check_every` steps: evaluate M_t and call `decide`."""
    return step - state.last_check_step >= settings.check_every


def on_broadcast(
    state: TriggerState, step: int, metric: float | None, settings: TriggerSettings
) -> TriggerState:
    """A new global model was swapped in: M_ref := its metric; a new reference point."""
    if settings.reset_stats_on_broadcast:
        return TriggerState(
            m_ref=metric,
            last_upload_step=state.last_upload_step,
            last_check_step=step,
            stats_since_step=step,
        )
    return replace(state, m_ref=metric, last_check_step=step)


def deviation(dev: float, settings: TriggerSettings) -> float:
    """s_ℓ from the stored statistic (√v for ema_var)."""
    return math.sqrt(dev) if settings.deviation == "ema_var" else dev


def update_layer(
    mu: float | None, dev: float, g: float, settings: TriggerSettings
) -> tuple[float, float]:
    """One EMA step for one layer; the first observation seeds μ = g, s = 0."""
    if mu is None:
        return g, 0.0
    b = settings.beta
    mu_new = b * mu + (1 - b) * g
    diff = g - mu_new  # gsfs.md updates μ first, then s with the updated μ
    if settings.deviation == "mad":
        return mu_new, b * dev + (1 - b) * abs(diff)
    return mu_new, b * dev + (1 - b) * diff * diff


def threshold(mu: float, dev: float, settings: TriggerSettings) -> float:
    """τ_ℓ = μ_ℓ + κ·s_ℓ."""
    return mu + settings.kappa * deviation(dev, settings)


def _gradient_check(
    state: TriggerState, obs: Observation, settings: TriggerSettings
) -> tuple[dict[str, float], dict[str, float], tuple[str, float, float] | None]:
    """New (μ, dev) per layer, and the first layer (sorted name) with g_ℓ > τ_ℓ, if any."""
    mu_out, dev_out = dict(state.mu), dict(state.dev)
    crossed: tuple[str, float, float] | None = None
    for name in sorted(obs.layer_norms):
        g = float(obs.layer_norms[name])
        prev_mu, prev_dev = state.mu.get(name), state.dev.get(name, 0.0)
        mu_out[name], dev_out[name] = update_layer(prev_mu, prev_dev, g, settings)
        if settings.threshold_from == "updated":
            tau = threshold(mu_out[name], dev_out[name], settings)
        else:
            tau = math.inf if prev_mu is None else threshold(prev_mu, prev_dev, settings)
        if crossed is None and g > tau:
            crossed = (name, g, tau)
    return mu_out, dev_out, crossed


def _fired(
    state: TriggerState,
    obs: Observation,
    settings: TriggerSettings,
    crossed: tuple[str, float, float] | None,
) -> Decision | None:
    """The first trigger that fires, before the minimum-gap rule is applied."""
    if obs.metric is not None and state.m_ref is not None:
        change = abs(obs.metric - state.m_ref)
        if change > settings.perf_delta:
            values = {"metric": obs.metric, "m_ref": state.m_ref, "change": change}
            return Decision(True, FireReason.PERFORMANCE, values=values)
    warm = obs.step - state.stats_since_step >= settings.warmup_steps
    if crossed is not None and warm:
        name, g, tau = crossed
        return Decision(True, FireReason.GRADIENT_NORM, name, values={"g": g, "tau": tau})
    silent = obs.step - state.last_upload_step
    if settings.max_silence_steps is not None and silent >= settings.max_silence_steps:
        return Decision(True, FireReason.MAX_SILENCE, values={"silent_steps": float(silent)})
    return None


def decide(
    state: TriggerState, obs: Observation, settings: TriggerSettings
) -> tuple[Decision, TriggerState]:
    """Update the statistics with `obs` and say whether to upload now, and why."""
    mu, dev, crossed = _gradient_check(state, obs, settings)
    m_ref = state.m_ref if state.m_ref is not None else obs.metric  # first metric = reference
    new_state = replace(state, mu=mu, dev=dev, m_ref=m_ref, last_check_step=obs.step)
    decision = _fired(state, obs, settings, crossed)
    if decision is None:
        return Decision(False), new_state
    if obs.step - state.last_upload_step < settings.min_steps_between_uploads:
        held = Decision(False, decision.reason, decision.layer, "min_gap", decision.values)
        return held, new_state
    uploaded_ref = obs.metric if obs.metric is not None else m_ref
    return decision, replace(new_state, m_ref=uploaded_ref, last_upload_step=obs.step)


def significant_layers(
    changes: Mapping[str, float], magnitudes: Mapping[str, float], settings: TriggerSettings
) -> list[str]:
    """Layers to send in a partial update: ‖Δ_ℓ‖/‖θ_ℓ‖ ≥ threshold, at least the largest.

    All layers when partial updates are off. `changes` is ‖Δ_ℓ‖₂ against the base version,
    `magnitudes` is ‖θ_ℓ‖₂ of the base version (0 treated as relative change = ‖Δ_ℓ‖).
    """
    if not settings.partial_updates or not changes:
        return sorted(changes)
    rel = {name: c / magnitudes[name] if magnitudes.get(name) else c for name, c in changes.items()}
    chosen = {name for name, r in rel.items() if r >= settings.partial_min_relative_change}
    chosen.add(max(rel, key=lambda name: rel[name]))
    return sorted(chosen)
