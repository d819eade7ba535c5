"""Checks at the door: every update is judged here before it touches a round or the GSFS pool.

Rules: the verdict is a `fedllm_proto.messages.RejectCode` or, on acceptance, the one
`AcceptedUpdate` record everything after the door uses. Checks run cheapest first so a flood
costs O(1) per message: fingerprint, 1 ≤ sample_count ≤ max_sample_count (as `unexpected`:
n_i is a FedAvg weight, so an unbounded one is a model replacement), future_version, too_stale
(a lag over `max_lag`: 0 for synchronous rounds, the schedule says), replay, rate_limited (one
token per update that reaches the gate, accepted or not), then the O(model) tensor checks
tensor_mismatch (`exact`: every global tensor, as FedAvg/FedOpt need; else a subset),
non_finite (naming the first tensor holding NaN or inf), norm_too_large. The norm is computed
(and carried in the verdict, for the logs) whenever the tensor checks ran; it is always finite
(squares that overflow float32 are summed again from scaled float64 values).
The norm bound is on by default and follows the federation (`NormBoundSettings`): until
`min_history` updates have been accepted it is the absolute `warmup_bound`; then it is
`factor` times the median of the last `history` accepted norms (never below `min_bound`, so a
run of zero deltas cannot lock everyone out). `validation.max_l2_norm`, when set, is a fixed cap
on top. Only accepted norms enter the history, so rejected attackers cannot move it, and an
accepted minority moves a median little.
An accepted update's id is remembered (per-client LRU) so a replay is refused. `DoorState` is
the only state; it is explicit, bounded, serialisable and changed only by `check_update`.
No clock: `now` (monotonic) and `wall` (the record's timestamp) are arguments.
"""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from fedllm_core.settings import FrozenSettings
from fedllm_proto.messages import RejectCode, Update
from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.strategies.settings import ValidationSettings
from fedllm_server.tensors import l2_norm

TensorSpec = tuple[tuple[int, ...], str]  # (shape, dtype name)


@dataclass(frozen=True)
class GlobalRef:
    """What an update is checked against: the current global model's identity and layout."""

    fingerprint: str
    version: int
    specs: Mapping[str, TensorSpec]

    @classmethod
    def from_tensors(
        cls, fingerprint: str, version: int, tensors: Mapping[str, npt.NDArray[Any]]
    ) -> GlobalRef:
        specs = {name: (tuple(a.shape), a.dtype.name) for name, a in tensors.items()}
        return cls(fingerprint, version, specs)


@dataclass(frozen=True)
class Sender:
    """Who sent an update: the session's client id and the fingerprint it was admitted with."""

    client_id: str
    fingerprint: str


class NormBoundSettings(FrozenSettings):
    """The door's bound on ‖Δ‖₂, derived from the norms it has accepted (see module rules)."""

    enabled: bool = True
    factor: float = Field(default=10.0, gt=1, description="c: ‖Δ‖₂ <= c x median accepted")
    history: int = Field(default=64, ge=1, description="K: recent accepted norms kept")
    min_history: int = Field(default=8, ge=1, description="accepted norms before the median")
    warmup_bound: float = Field(default=1000.0, gt=0, description="absolute bound until then")
    min_bound: float = Field(default=1e-3, gt=0, description="the derived bound's floor")

    @model_validator(mode="after")
    def _history_holds_warmup(self) -> NormBoundSettings:
        if self.min_history > self.history:
            raise ValueError("min_history must be <= history")
        return self


@dataclass(frozen=True)
class DoorRules:
    """The checks' parameters: the settings, plus what the strategy and schedule allow."""

    settings: ValidationSettings
    max_lag: int  # versions an update may lag behind (0: synchronous rounds)
    exact: bool  # every global tensor required (FedAvg/FedOpt); False: a subset (GSFS)
    norm_bound: NormBoundSettings = field(default_factory=NormBoundSettings)


@dataclass(frozen=True)
class Verdict:
    """A door decision: the accepted record, or a code with the detail for the Reject."""

    code: RejectCode | None
    detail: str = ""
    norm: float | None = None  # ‖Δ‖₂, computed whenever the tensor checks ran
    update: AcceptedUpdate | None = None  # set exactly when accepted
    blame: bool = True  # False: the server's own state, not the client's fault

    @property
    def accepted(self) -> bool:
        return self.code is None


@dataclass
class TokenBucket:
    """Capacity C tokens refilled at C/window per second; one upload takes one token."""

    tokens: float
    updated_at: float

    def take(self, now: float, capacity: float, per_s: float) -> bool:
        elapsed = max(0.0, now - self.updated_at)  # a clock step backwards refills nothing
        self.tokens = min(capacity, self.tokens + elapsed * per_s)
        self.updated_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class DoorState:
    """Per-client replay memory (LRU of accepted update ids), rate-limit buckets, and the
    norms of the last accepted updates (oldest first; the norm bound's history)."""

    seen: dict[str, OrderedDict[str, None]] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    norms: list[float] = field(default_factory=list)

    def remember_norm(self, norm: float, capacity: int) -> None:
        self.norms.append(norm)
        del self.norms[: max(0, len(self.norms) - capacity)]

    def remember(self, client_id: str, update_id: str, capacity: int) -> None:
        ids = self.seen.setdefault(client_id, OrderedDict())
        ids[update_id] = None
        ids.move_to_end(update_id)
        while len(ids) > capacity:
            ids.popitem(last=False)  # forget the oldest id first

    def to_dict(self, now: float) -> dict[str, Any]:
        """Plain types; bucket times stored as ages so a restart's new clock is fine."""
        return {
            "seen": {cid: list(ids) for cid, ids in self.seen.items()},
            "buckets": {cid: [b.tokens, now - b.updated_at] for cid, b in self.buckets.items()},
            "norms": list(self.norms),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], now: float) -> DoorState:
        seen = {cid: OrderedDict.fromkeys(ids) for cid, ids in data["seen"].items()}
        buckets = {
            cid: TokenBucket(float(tokens), now - float(age))
            for cid, (tokens, age) in data["buckets"].items()
        }
        norms = [float(n) for n in data.get("norms", ())]  # absent before the norm bound
        return cls(seen=seen, buckets=buckets, norms=norms)


# --- the individual checks (pure) -------------------------------------------------------------


def check_version(base: int, current: int, max_staleness: int) -> Verdict | None:
    if base > current:
        return Verdict(RejectCode.FUTURE_VERSION, f"base_version {base} > current {current}")
    if base < 0 or current - base > max_staleness:
        return Verdict(
            RejectCode.TOO_STALE, f"base_version {base} lags {current} by > {max_staleness}"
        )
    return None


def check_sample_count(n: int, cap: int) -> Verdict | None:
    """n_i in [1, cap]: 0 weighs nothing (or divides by zero), a huge one takes the average."""
    if not 1 <= n <= cap:
        # no RejectCode fits better than this one
        return Verdict(RejectCode.UNEXPECTED, f"sample_count {n} outside [1, {cap}]")
    return None


def check_layout(
    tensors: Mapping[str, npt.NDArray[Any]], specs: Mapping[str, TensorSpec], exact: bool
) -> Verdict | None:
    """Names ⊆ global names (== when `exact`: FedAvg/FedOpt need them all), shapes, dtypes."""
    unknown = sorted(set(tensors) - set(specs))
    if unknown:
        return Verdict(RejectCode.TENSOR_MISMATCH, f"unknown tensors {unknown[:5]}")
    if not tensors or (exact and len(tensors) != len(specs)):
        missing = sorted(set(specs) - set(tensors))
        return Verdict(RejectCode.TENSOR_MISMATCH, f"missing tensors {missing[:5]}")
    for name, arr in tensors.items():
        shape, dtype = specs[name]
        if tuple(arr.shape) != shape or arr.dtype.name != dtype:
            got = (tuple(arr.shape), arr.dtype.name)
            return Verdict(RejectCode.TENSOR_MISMATCH, f"{name}: {got} != {(shape, dtype)}")
    return None


def norm_bound(
    rules: NormBoundSettings, fixed: float | None, accepted: list[float]
) -> tuple[float | None, str]:
    """The bound on ‖Δ‖₂ now, and what it is (for the Reject detail); None: no bound."""
    bounds: list[tuple[float, str]] = []
    if fixed is not None:
        bounds.append((fixed, "validation.max_l2_norm"))
    if rules.enabled and len(accepted) < rules.min_history:
        bounds.append((rules.warmup_bound, "norm_bound.warmup_bound"))
    elif rules.enabled:
        recent = accepted[-rules.history :]
        derived = max(rules.min_bound, rules.factor * statistics.median(recent))
        why = f"{rules.factor:g} x median of the last {len(recent)} accepted norms"
        bounds.append((derived, why))
    if not bounds:
        return None, ""
    return min(bounds)


def check_values(
    tensors: Mapping[str, npt.NDArray[Any]], max_norm: float | None, why: str = ""
) -> Verdict:
    """All finite and ‖Δ‖₂ within bound; one BLAS pass, isfinite only when the sum is not."""
    norm = l2_norm(tensors)
    if not math.isfinite(norm):
        bad = next((k for k, a in tensors.items() if not bool(np.isfinite(a).all())), None)
        if bad is not None:
            return Verdict(RejectCode.NON_FINITE, f"tensor {bad!r} holds NaN or inf")
        norm = _norm_without_overflow(tensors)
    if not math.isfinite(norm):  # cannot happen for finite float32 values; never let it by
        return Verdict(RejectCode.NON_FINITE, f"‖Δ‖₂ is {norm}")
    if max_norm is not None and norm > max_norm:
        detail = f"norm bound: ‖Δ‖₂ {norm:.6g} > {max_norm:.6g}" + (f" ({why})" if why else "")
        return Verdict(RejectCode.NORM_TOO_LARGE, detail, norm)
    return Verdict(None, "", norm)


def _norm_without_overflow(tensors: Mapping[str, npt.NDArray[Any]]) -> float:
    """Finite values whose squares overflow float32: scale by the max first."""
    peak = max(float(np.abs(a).max()) if a.size else 0.0 for a in tensors.values())
    scaled = {k: (a / peak).astype(np.float64) for k, a in tensors.items()}
    return peak * l2_norm(scaled)


# --- the door ---------------------------------------------------------------------------------


def _gate(
    update: Update, client_id: str, settings: ValidationSettings, door: DoorState, now: float
) -> Verdict | None:
    """Replay, then rate limit (takes a token whether or not the rest passes)."""
    if update.update_id in door.seen.get(client_id, ()):
        return Verdict(RejectCode.REPLAY, f"update_id {update.update_id} already accepted")
    capacity = float(settings.rate_limit_updates)
    bucket = door.buckets.setdefault(client_id, TokenBucket(capacity, now))
    if not bucket.take(now, capacity, capacity / settings.rate_limit_window_s):
        window = settings.rate_limit_window_s
        return Verdict(RejectCode.RATE_LIMITED, f"> {capacity:g} updates per {window:g} s")
    return None


def check_update(
    update: Update,
    sender: Sender,
    ref: GlobalRef,
    rules: DoorRules,
    door: DoorState,
    now: float,
    wall: float = 0.0,
) -> Verdict:
    """Judge one update; on acceptance its id is remembered in `door` and the verdict carries
    the `AcceptedUpdate` (stamped `wall`, with the norm the checks computed)."""
    settings = rules.settings
    if sender.fingerprint != ref.fingerprint:
        return Verdict(RejectCode.FINGERPRINT_MISMATCH, "model fingerprint differs")
    bad_count = check_sample_count(update.sample_count, settings.max_sample_count)
    if bad_count is not None:
        return bad_count
    early = check_version(update.base_version, ref.version, rules.max_lag)
    early = early or _gate(update, sender.client_id, settings, door, now)
    early = early or check_layout(update.tensors, ref.specs, exact=rules.exact)
    if early is not None:
        return early
    bound, why = norm_bound(rules.norm_bound, settings.max_l2_norm, door.norms)
    verdict = check_values(update.tensors, bound, why)
    if not verdict.accepted or verdict.norm is None:
        return verdict
    door.remember(sender.client_id, update.update_id, settings.replay_memory)
    door.remember_norm(verdict.norm, rules.norm_bound.history)
    return Verdict(None, "", verdict.norm, _record(update, sender.client_id, wall, verdict.norm))


def _record(update: Update, client_id: str, wall: float, norm: float) -> AcceptedUpdate:
    return AcceptedUpdate(
        client_id=client_id,
        update_id=update.update_id,
        base_version=update.base_version,
        round=update.round,
        sample_count=update.sample_count,
        trigger=str(update.trigger),
        accepted_at=wall,
        metrics=dict(update.metrics),
        tensors=dict(update.tensors),
        norm=norm,
    )
