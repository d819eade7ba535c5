"""Running weighted sum of deltas: the one place aggregation touches every tensor element.

Rules: memory is O(model), never O(clients × model): per tensor one float64 running sum
Σ w_i·Δ_i, one small scratch block, and the weights folded into it. With ``keep_buffers`` the
sums survive `take_mean` as spare storage and `reset` starts the next aggregation in them: a
daemon aggregating every round then reuses memory it has already touched instead of faulting
in 2× the model's bytes of fresh pages each time (0.6 s per round for a 100 MB model, measured
on the 2-core development VM). Each update is folded
in place, block by block (`np.multiply(out=)`, `np.add(out=)`), and may be dropped by the caller
right after. Weight totals are per tensor so partial updates average each tensor over exactly the
clients that sent it. The caller's arrays are never written. `keep` is the other way in, for
the robust rules that need every update at once (docs/robust.md): it holds the received arrays
by reference with their weights, which costs the n updates themselves, O(n × model).

Why float64 sums: updates arrive in whatever order the network delivers them, and float32
addition is not associative, so a float32 running sum made the same round give different models
run to run (measured: FedAvg on MiniLM diverged from version 5 on). Summed in float64 and
rounded once to float32 at the end, the result no longer depends on arrival order (barring a
float64 sum that falls exactly on a float32 rounding boundary); weight totals use `math.fsum`,
which is exactly rounded and so order-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedllm_server.tensors import Array, TensorDict

# Elements per block: 1 MiB of float64 keeps the scratch block in L2, so a fold streams Δ and the
# sum once instead of making five whole-tensor passes.
BLOCK = 1 << 17


def _axpy(
    acc: Array, delta: Array, w: np.float64, scratch: Array, overwrite: bool, want_norm: bool
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

    def __init__(self, keep_buffers: bool = False) -> None:
        self._keep_buffers = keep_buffers
        self._spare: TensorDict = {}  # name -> float64 sum of an earlier aggregation, reusable
        self._sums: TensorDict = {}  # name -> (shape of tensor) float64
        self._weights: dict[str, list[float]] = {}  # name -> w_i of the clients that sent it
        self._scratch: Array = np.empty(BLOCK, dtype=np.float64)  # (BLOCK,) stays in cache
        self.clients: list[str] = []
        self.raw_weights: dict[str, float] = {}
        self.norms: dict[str, float] = {}
        self.excluded: dict[str, str] = {}  # client -> why it was left out
        self.extra: dict[str, float] = {}  # strategy scalars gathered while folding
        # Updates held whole instead of folded (a robust rule needs all of them at once): the
        # received arrays themselves, never copied or written.
        self.kept: list[tuple[str, Mapping[str, Array], float]] = []  # (client, Δ, w)

    def add(
        self,
        client_id: str,
        tensors: Mapping[str, Array],
        weight: float,
        norm: float | None = None,
        scale: float = 1.0,
    ) -> None:
        """Fold w·s·Δ into the sums, w into the totals (s: a clipping scale, so the mean is
        Σ w_i·s_i·Δ_i / Σ w_i). ‖Δ‖₂ is computed in the same pass unless `norm` is given.

        A zero weight (e.g. n_i = 0 under sample weighting) leaves the client out, recorded in
        `excluded`, rather than failing a whole round; negative or non-finite weights are bugs.
        """
        if not self._admit(client_id, weight):
            return
        squares = 0.0
        for name, delta in tensors.items():
            squares += self._fold(name, delta, weight, scale, want_norm=norm is None)
        self._record(client_id, weight, math.sqrt(squares) if norm is None else norm)

    def keep(
        self, client_id: str, tensors: Mapping[str, Array], weight: float, norm: float
    ) -> None:
        """Hold Δ whole (by reference) with its weight, for a rule that needs every update."""
        if not self._admit(client_id, weight):
            return
        self.kept.append((client_id, tensors, weight))
        for name in tensors:
            self._weights.setdefault(name, []).append(weight)
        self._record(client_id, weight, norm)

    def _admit(self, client_id: str, weight: float) -> bool:
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight for {client_id!r} must be finite and >= 0, got {weight}")
        if client_id in self.raw_weights or client_id in self.excluded:
            raise ValueError(f"client {client_id!r} folded twice into one aggregation")
        if weight == 0:
            self.excluded[client_id] = "zero_weight"
            return False
        return True

    def _record(self, client_id: str, weight: float, norm: float) -> None:
        self.clients.append(client_id)
        self.raw_weights[client_id] = weight
        self.norms[client_id] = norm

    def exclude(self, client_id: str, reason: str) -> None:
        """Leave a client out of this aggregation, recording why (for the metrics record)."""
        self.excluded[client_id] = reason

    def _fold(self, name: str, delta: Array, weight: float, scale: float, want_norm: bool) -> float:
        """acc += w·s·Δ block by block; returns Σ Δ² when asked (0.0 otherwise)."""
        acc = self._sums.get(name)
        if acc is None:
            acc = self._sums[name] = self._storage(name, delta.shape)
            self._weights[name], first = [], True
        elif acc.shape != delta.shape:
            raise ValueError(f"tensor {name!r}: shape {delta.shape} != {acc.shape}")
        else:
            first = False
        squares = _axpy(
            acc.reshape(-1),
            np.ascontiguousarray(delta).reshape(-1),
            np.float64(weight * scale),
            self._scratch,
            overwrite=first,
            want_norm=want_norm,
        )
        self._weights[name].append(weight)
        return squares

    def _storage(self, name: str, shape: tuple[int, ...]) -> Array:
        spare = self._spare.pop(name, None)
        if spare is not None and spare.shape == shape:
            return spare  # overwritten by the first fold, never read before
        return np.empty(shape, dtype=np.float64)

    def reset(self) -> None:
        """Empty the accumulator for the next aggregation (keeping the sums as spare storage
        with ``keep_buffers``)."""
        if self._keep_buffers:
            self._spare.update(self._sums)
        self._sums, self._weights = {}, {}
        self.clients, self.raw_weights, self.norms, self.excluded = [], {}, {}, {}
        self.extra, self.kept = {}, []

    @property
    def tensor_clients(self) -> dict[str, int]:
        return {name: len(weights) for name, weights in self._weights.items()}

    def take_mean(self, scale: float = 1.0) -> TensorDict:
        """scale · Σ w_i Δ_i / Σ w_i per tensor as float32 (one rounding); the sum is consumed.

        After this call the accumulator holds no sums: without ``keep_buffers`` each is freed as
        soon as it is rounded, which keeps the whole aggregation at one model's worth of sums;
        with it they become spare storage for the next aggregation (see `reset`).
        """
        out: TensorDict = {}
        for name in list(self._sums):
            acc = self._sums.pop(name)  # (shape,) float64
            if self._keep_buffers:
                self._spare[name] = acc
            factor = np.float64(scale / math.fsum(self._weights[name]))
            out[name] = np.multiply(
                acc, factor, out=np.empty(acc.shape, np.float32), casting="same_kind"
            )
        return out

    def normalised_weights(self) -> dict[str, float]:
        """α_i = w_i / Σ_j w_j over every client folded (for the metrics record)."""
        total = math.fsum(self.raw_weights.values())
        return {cid: w / total for cid, w in self.raw_weights.items()}

    def __len__(self) -> int:
        return len(self.clients)
