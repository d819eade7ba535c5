"""Running weighted sum of deltas: the one place aggregation touches every tensor element.

Rules: memory is O(model), never O(clients × model): per tensor one float32 running sum
Σ w_i·Δ_i, one small scratch block, and a float64 weight total per tensor. Each update is folded
in place, block by block (`np.multiply(out=)`, `np.add(out=)`), and may be dropped by the caller
right after. Weight totals are per tensor so partial updates average each tensor over exactly the
clients that sent it. The caller's arrays are never written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedllm_server.strategies.base import Array, TensorDict

# Elements per block: 512 KiB of float32 keeps the scratch block in L2, so a fold moves about
# as many bytes as a memcpy (read Δ, read+write the sum) instead of five whole-tensor passes.
BLOCK = 1 << 17


def _axpy(
    acc: Array, delta: Array, w: np.float32, scratch: Array, overwrite: bool, want_norm: bool
) -> float:
    """acc (=|+=) w·delta over flat views, block by block; Σ delta² in the same pass if asked."""
    squares = 0.0
    for start in range(0, delta.size, BLOCK):
        d = delta[start : start + BLOCK]  # (≤ BLOCK,)
        a = acc[start : start + BLOCK]
        if overwrite:
            np.multiply(d, w, out=a)
        else:
            s = scratch[: d.size]
            np.multiply(d, w, out=s)
            np.add(a, s, out=a)
        if want_norm:
            squares += float(np.dot(d, d))  # block is still in cache
    return squares


class WeightedSum:
    """Σ_i w_i·Δ_i and Σ_i w_i per tensor; fold with `add`, read once with `take_mean`."""

    def __init__(self) -> None:
        self._sums: TensorDict = {}  # name -> (shape of tensor) float32
        self._totals: dict[str, float] = {}  # name -> Σ w_i over clients that sent it
        self._counts: dict[str, int] = {}  # name -> how many clients sent it
        self._scratch: Array = np.empty(BLOCK, dtype=np.float32)  # (BLOCK,) stays in cache
        self.clients: list[str] = []
        self.raw_weights: dict[str, float] = {}
        self.norms: dict[str, float] = {}
        self.excluded: dict[str, str] = {}  # client -> why it was left out

    def add(
        self,
        client_id: str,
        tensors: Mapping[str, Array],
        weight: float,
        norm: float | None = None,
    ) -> None:
        """Fold w·Δ into the sums. ‖Δ‖₂ is computed in the same pass unless `norm` is given.

        A zero weight (e.g. n_i = 0 under sample weighting) leaves the client out, recorded in
        `excluded`, rather than failing a whole round; negative or non-finite weights are bugs.
        """
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight for {client_id!r} must be finite and >= 0, got {weight}")
        if client_id in self.raw_weights or client_id in self.excluded:
            raise ValueError(f"client {client_id!r} folded twice into one aggregation")
        if weight == 0:
            self.excluded[client_id] = "zero_weight"
            return
        squares = 0.0
        for name, delta in tensors.items():
            squares += self._fold(name, delta, weight, want_norm=norm is None)
        self.clients.append(client_id)
        self.raw_weights[client_id] = weight
        self.norms[client_id] = math.sqrt(squares) if norm is None else norm

    def _fold(self, name: str, delta: Array, weight: float, want_norm: bool) -> float:
        """acc += w·Δ block by block; returns Σ Δ² when asked (0.0 otherwise)."""
        acc = self._sums.get(name)
        if acc is None:
            acc = self._sums[name] = np.empty(delta.shape, dtype=np.float32)
            self._totals[name], self._counts[name], first = 0.0, 0, True
        elif acc.shape != delta.shape:
            raise ValueError(f"tensor {name!r}: shape {delta.shape} != {acc.shape}")
        else:
            first = False
        squares = _axpy(
            acc.reshape(-1),
            np.ascontiguousarray(delta).reshape(-1),
            np.float32(weight),
            self._scratch,
            overwrite=first,
            want_norm=want_norm,
        )
        self._totals[name] += weight
        self._counts[name] += 1
        return squares

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
        return out

    def normalised_weights(self) -> dict[str, float]:
        """α_i = w_i / Σ_j w_j over every client folded (for the metrics record)."""
        total = math.fsum(self.raw_weights.values())
        return {cid: w / total for cid, w in self.raw_weights.items()}

    def __len__(self) -> int:
        return len(self.clients)
