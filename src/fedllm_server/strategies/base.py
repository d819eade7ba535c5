"""Types shared by the strategies: an update as a strategy sees it, and what a strategy returns.

Rules: strategies are pure, (global state, updates, strategy state) -> (new global, new state,
metrics). They never mutate the caller's arrays, read a clock, log or sample. Every update is a
delta Δ_i = θ_i − θ^{base_i} (float32 TensorDict); a GSFS partial update carries a subset of
the tensor names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
TensorDict = dict[str, Array]
S = TypeVar("S")


@dataclass(frozen=True)
class ClientUpdate:
    """One client's delta against the global version it started from."""

    client_id: str
    tensors: Mapping[str, Array]  # name -> Δ (same shape as the global tensor)
    sample_count: int  # n_i
    base_version: int  # v_i
    frequency: int = 1  # f_i (GSFS only; the pool fills it in)
    norm: float | None = None  # ‖Δ_i‖₂ when the caller already has it (the door computes it)


@dataclass(frozen=True)
class AggregationMetrics:
    """What one aggregation did, for the daemon's metrics file."""

    strategy: str
    version: int  # the new global version this aggregation produced
    clients: tuple[str, ...]  # included, in arrival order
    weights: dict[str, float]  # normalised α_i over the included clients (sum to 1)
    update_norms: dict[str, float]  # ‖Δ_i‖₂ per included client
    step_norm: float  # ‖θ^{v+1} − θ^v‖₂
    tensor_clients: dict[str, int]  # how many clients sent each tensor (partial updates)
    excluded: dict[str, str] = field(default_factory=dict)  # client -> why left out
    extra: dict[str, float] = field(default_factory=dict)  # strategy-specific scalars

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "version": self.version,
            "clients": list(self.clients),
            "weights": dict(self.weights),
            "update_norms": dict(self.update_norms),
            "step_norm": self.step_norm,
            "tensor_clients": dict(self.tensor_clients),
            "excluded": dict(self.excluded),
            "extra": dict(self.extra),
        }


@dataclass(frozen=True)
class StrategyResult(Generic[S]):
    """New global model, new strategy state, and the metrics record."""

    global_tensors: TensorDict
    state: S
    metrics: AggregationMetrics


class EmptyAggregationError(ValueError):
    """Asked to aggregate no updates: the caller decides what an empty round means."""


def l2_norm(tensors: Mapping[str, npt.NDArray[Any]]) -> float:
    """‖x‖₂ over every tensor with O(1) extra memory (BLAS dot per tensor, summed in float64).

    A non-finite entry, or squares overflowing float32, gives inf: callers that must tell the
    two apart check `np.isfinite` only on that rare path.
    """
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as inf
        for arr in tensors.values():
            flat = arr.reshape(-1)  # (numel,) view of a C-contiguous array
            total += float(np.dot(flat, flat))
    return math.sqrt(total) if math.isfinite(total) else math.inf


def apply_step(global_tensors: Mapping[str, Array], step: TensorDict) -> tuple[TensorDict, float]:
    """θ^{v+1} = θ^v + step, written into the step's own buffers; returns it and ‖step‖₂.

    Tensors absent from `step` are passed through as the same (read-only by convention)
    arrays, so an aggregation allocates nothing beyond its running sums.
    """
    step_norm = l2_norm(step)
    new: TensorDict = dict(global_tensors)
    for name, delta in step.items():
        new[name] = np.add(global_tensors[name], delta, out=delta)  # (shape) float32
    return new, step_norm
