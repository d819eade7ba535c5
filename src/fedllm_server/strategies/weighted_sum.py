"""Running weighted sum of deltas: the one place aggregation touches every tensor element.

Rules: memory is O(model), never O(clients × model): per tensor one float32 running sum
Σ w_i·Δ_i plus one shared scratch buffer, and a float64 weight total per tensor. Each update is
folded in place (`np.multiply(out=)`, `np.add(out=)`) and may be dropped by the caller right
after. Weight totals are per tensor so partial updates average each tensor over exactly the
clients that sent it. The caller's arrays are never written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedllm_server.strategies.base import Array, TensorDict, l2_norm


class WeightedSum:
    """Σ_i w_i·Δ_i per tensor, with Σ_i w_i per tensor; fold with `add`, read with `mean`."""

    def __init__(self) -> None:
        self._sums: TensorDict = {}  # name -> (shape of tensor) float32
        self._totals: dict[str, float] = {}  # name -> Σ w_i over clients that sent it
        self._counts: dict[str, int] = {}  # name -> how many clients sent it
        self._scratch: Array = np.empty(0, dtype=np.float32)  # (max numel,) reused buffer
        self.clients: list[str] = []
        self.raw_weights: dict[str, float] = {}
        self.norms: dict[str, float] = {}

    def add(
        self,
        client_id: str,
        tensors: Mapping[str, Array],
        weight: float,
        norm: float | None = None,
    ) -> None:
        """Fold w·Δ into the sums. `norm` (‖Δ‖₂) is computed here unless the caller has it."""
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight for {client_id!r} must be finite and > 0, got {weight}")
        if client_id in self.raw_weights:
            raise ValueError(f"client {client_id!r} folded twice into one aggregation")
        for name, delta in tensors.items():
            self._fold(name, delta, weight)
        self.clients.append(client_id)
        self.raw_weights[client_id] = weight
        self.norms[client_id] = l2_norm(tensors) if norm is None else norm

    def _fold(self, name: str, delta: Array, weight: float) -> None:
        w = np.float32(weight)
        acc = self._sums.get(name)
        if acc is None:
            self._sums[name] = np.multiply(delta, w, dtype=np.float32)  # first sender: allocate
            self._totals[name] = weight
            self._counts[name] = 1
            return
        if acc.shape != delta.shape:
            raise ValueError(f"tensor {name!r}: shape {delta.shape} != {acc.shape}")
        scratch = self._scratch_for(delta.size).reshape(delta.shape)  # view, no allocation
        np.multiply(delta, w, out=scratch)
        np.add(acc, scratch, out=acc)
        self._totals[name] += weight
        self._counts[name] += 1

    def _scratch_for(self, numel: int) -> Array:
        if self._scratch.size < numel:
            self._scratch = np.empty(numel, dtype=np.float32)
        return self._scratch[:numel]

    @property
    def tensor_clients(self) -> dict[str, int]:
        return dict(self._counts)

    def take_mean(self, scale: float = 1.0) -> TensorDict:
        """scale · Σ w_i Δ_i / Σ w_i per tensor, computed in place; the sum is consumed.

        After this call the accumulator is empty (its buffers became the result), which is
        what keeps the whole aggregation at one model's worth of sums.
        """
        out: TensorDict = {}
        for name, acc in self._sums.items():
            np.multiply(acc, np.float32(scale / self._totals[name]), out=acc)
            out[name] = acc
        self._sums = {}
        self._scratch = np.empty(0, dtype=np.float32)
        return out

    def normalised_weights(self) -> dict[str, float]:
        """α_i = w_i / Σ_j w_j over every client folded (for the metrics record)."""
        total = math.fsum(self.raw_weights.values())
        return {cid: w / total for cid, w in self.raw_weights.items()}

    def __len__(self) -> int:
        return len(self.clients)
