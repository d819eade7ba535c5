"""DP-FedAvg's mechanisms (McMahan et al. 2018): client-level clipping plus Gaussian noise.

Rules: a client's delta is clipped to L2 norm C over all its tensors (scale min(1, C/‖Δ‖₂)).
Central mode (trusted server): Δ̃ = (Σ_i w_i·clip(Δ_i) + N(0, σ²C²·I)) / W_exp, with weights
w_i ∈ [0, 1] and a fixed denominator W_exp (the expected total weight, e.g. q·N or the number of
eligible clients), so one client changes the noised sum by at most C whatever it sends, sending
nothing included; the noise on the mean is σ·C/W_exp per coordinate. The denominator and the
weights must not depend on the data: that is what makes the sensitivity C (docs/privacy.md).
Noise goes on every tensor of the model, sent or not, so the set of tensors a partial update
carried is not revealed either; a tensor nobody sent moves by noise alone.
Local mode (clip(Δ) + N(0, σ²C²·I) on every tensor a client sends) runs on the client:
`fedllm_core.privacy.local_privatise`.
Randomness comes in as a `NoiseSource` (the CSPRNG in production). Streaming: the central mean
reads each update once after its norm pass and holds one float64 sum per tensor, O(model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedllm_core.privacy import F64, NoiseSource, add_gaussian, clip_scale
from fedllm_server.robust.base import Array, Contribution, TensorDict, finite_norm


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def clip_delta(
    tensors: Mapping[str, Array], clip_norm: float, client_id: str = "local"
) -> tuple[TensorDict, float, float]:
    """New float32 arrays scale·Δ with ‖·‖₂ ≤ C; returns them, ‖Δ‖₂ and the scale."""
    _positive("clip_norm", clip_norm)
    norm = finite_norm(client_id, tensors)
    scale = clip_scale(norm, clip_norm)
    clipped = {k: np.multiply(v, np.float32(scale), dtype=np.float32) for k, v in tensors.items()}
    return clipped, norm, scale


@dataclass(frozen=True)
class DpMeanReport:
    """What one noised aggregation did, for the metrics file and the accountant."""

    clients: tuple[str, ...]  # contributed (weight > 0)
    norms: dict[str, float]  # ‖Δ_i‖₂ before clipping
    scales: dict[str, float]  # min(1, C/‖Δ_i‖₂)
    clip_norm: float  # C
    noise_multiplier: float  # σ
    expected_weight: float  # W_exp, the fixed denominator
    weight_sum: float  # Σ w_i actually contributed (W_exp is used, not this)
    noise_std: float  # σ·C/W_exp, per coordinate of the mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "clients": list(self.clients),
            "norms": dict(self.norms),
            "scales": dict(self.scales),
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "expected_weight": self.expected_weight,
            "weight_sum": self.weight_sum,
            "noise_std": self.noise_std,
        }


class _ClippedSum:
    """Σ w_i·clip(Δ_i) per tensor in float64 over a fixed tensor layout."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], clip_norm: float) -> None:
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.clip_norm = clip_norm
        self.sums: dict[str, F64] = {}
        self.norms: dict[str, float] = {}
        self.scales: dict[str, float] = {}
        self.weights: list[float] = []

    def add(self, c: Contribution) -> None:
        if c.client_id in self.norms:
            raise ValueError(f"client {c.client_id!r} appears twice in one aggregation")
        if not (math.isfinite(c.weight) and 0 <= c.weight <= 1):
            raise ValueError(f"DP weight for {c.client_id!r} must be in [0, 1]: {c.weight}")
        for name, arr in c.tensors.items():
            if self.shapes.get(name) != arr.shape:
                raise ValueError(f"tensor {name!r}: shape {arr.shape} not in the model layout")
        norm = finite_norm(c.client_id, c.tensors)
        if c.weight == 0:
            return
        scale = clip_scale(norm, self.clip_norm)
        self.norms[c.client_id], self.scales[c.client_id] = norm, scale
        self.weights.append(c.weight)
        factor = np.float64(c.weight * scale)
        for name, arr in c.tensors.items():
            term = np.multiply(arr, factor, dtype=np.float64)  # (shape) float64
            if name in self.sums:
                self.sums[name] += term
            else:
                self.sums[name] = term


def central_noised_mean(
    contributions: Iterable[Contribution],
    shapes: Mapping[str, tuple[int, ...]],
    clip_norm: float,
    noise_multiplier: float,
    expected_weight: float,
    source: NoiseSource,
) -> tuple[TensorDict, DpMeanReport]:
    """(Σ w_i·clip_C(Δ_i) + N(0, σ²C²)) / W_exp on every tensor of `shapes` (float32).

    `shapes`: the global model's name -> shape (noise goes on all of it). Weights must lie in
    [0, 1]; `expected_weight` is the data-independent denominator W_exp.
    """
    _positive("clip_norm", clip_norm)
    _positive("noise_multiplier", noise_multiplier)
    _positive("expected_weight", expected_weight)
    acc = _ClippedSum(shapes, clip_norm)
    for c in contributions:
        acc.add(c)
    std = noise_multiplier * clip_norm
    out: TensorDict = {}
    for name, shape in shapes.items():
        total = acc.sums.pop(name, None)
        total = np.zeros(shape, dtype=np.float64) if total is None else total  # (shape) f64
        add_gaussian(total.reshape(-1), std, source)
        total /= expected_weight
        out[name] = total.astype(np.float32)
    report = DpMeanReport(
        clients=tuple(acc.norms),
        norms=acc.norms,
        scales=acc.scales,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        expected_weight=expected_weight,
        weight_sum=math.fsum(acc.weights),
        noise_std=std / expected_weight,
    )
    return out, report


def poisson_sample(client_ids: Sequence[str], q: float, source: NoiseSource) -> tuple[str, ...]:
    """Each client independently with probability q (the sampling that amplifies privacy)."""
    if not 0 < q <= 1:
        raise ValueError(f"sampling probability must be in (0, 1], got {q}")
    draws = source.uniform(len(client_ids))  # (n,) in [0, 1)
    return tuple(cid for cid, u in zip(client_ids, draws, strict=True) if u < q)
