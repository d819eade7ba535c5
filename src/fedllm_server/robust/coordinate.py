"""Coordinate-wise trimmed mean and median (Yin et al. 2018), weighted, per tensor.

Rules: each coordinate is aggregated on its own, over the clients that sent its tensor. The k
values of a coordinate are sorted and each carries its client's weight w_i; on the weight axis
[0, W] (W = Σ w_i) the trimmed mean keeps the interval [β·W, (1−β)·W] and averages the values by
the weight each keeps there; a value straddling a cut is kept in part. With unit weights and
β·k an integer this is the textbook rule: drop the β·k lowest and β·k highest values, average the
rest. The weighted median is the value at the middle of the weight axis, or the mean of the two
values on either side when W/2 falls exactly on a boundary (so the plain median for unit weights
and an even k). Weights are the caller's: a client holding more than β of the weight cannot be
trimmed away, so pass capped or uniform weights when weights are attacker-controlled.

Memory: all k updates must be present (the caller holds O(k × model)); the rule itself adds the
output (one model, float32) and the sort of one (k, block) float64 stack at a time
(STACK_ELEMENTS entries; with the sort and its temporaries under about 60 MiB), never the
whole stacked model.
Per client it reports the share of its weight the rule discarded (trimmed mean) or the share of
coordinates where its value was the median (median, 0.5 each when two values are averaged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedllm_server.robust.base import (
    F64,
    Member,
    RobustParams,
    RuleOutput,
    TensorDict,
    blocks,
    senders,
)

# (sorted values (k, b), sorted weights (k, b), cumulative weights (k, b), W) -> (aggregate (b,),
# share (k, b) of the per-client score at each sorted position)
Kernel = Callable[[F64, F64, F64, float], tuple[F64, F64]]


def _sorted_block(stack: F64, weights: F64) -> tuple[np.ndarray, F64, F64, F64]:
    order = np.argsort(stack, axis=0, kind="stable")  # (k, b) row index of each sorted value
    values = np.take_along_axis(stack, order, axis=0)  # (k, b) ascending per column
    w = weights[order]  # (k, b) weight of each sorted value
    return order, values, w, np.cumsum(w, axis=0)


def _trim_kernel(beta: float) -> Kernel:
    def kernel(values: F64, w: F64, cum: F64, total: float) -> tuple[F64, F64]:
        lo, hi = beta * total, (1.0 - beta) * total
        kept = np.clip(np.minimum(cum, hi) - np.maximum(cum - w, lo), 0.0, None)  # (k, b)
        aggregate = np.einsum("kb,kb->b", kept, values) / (hi - lo)  # (b,)
        return aggregate, 1.0 - kept / w  # share of each value's weight trimmed

    return kernel


def _median_kernel(values: F64, w: F64, cum: F64, total: float) -> tuple[F64, F64]:
    half, tol = 0.5 * total, 1e-12 * total  # tol: cumsum rounding must not split a tie
    cols = np.arange(values.shape[1])
    lower = np.argmax(cum >= half - tol, axis=0)  # (b,) first value reaching W/2
    upper = np.argmax(cum > half + tol, axis=0)  # (b,) first value past W/2
    aggregate = 0.5 * (values[lower, cols] + values[upper, cols])
    share = np.zeros_like(values)
    share[lower, cols] += 0.5  # each (row, col) pair is unique within one assignment
    share[upper, cols] += 0.5
    return aggregate, share


def _coordinatewise(members: Sequence[Member], kernel: Kernel, score: str) -> RuleOutput:
    weights = np.array([m.weight for m in members], dtype=np.float64)  # (n,)
    share = np.zeros(len(members), dtype=np.float64)  # Σ over coordinates, per member
    coords = np.zeros(len(members), dtype=np.float64)
    delta: TensorDict = {}
    for name, rows in senders(members).items():
        first = members[rows[0]].contribution.tensors[name]
        out = np.empty(first.size, dtype=np.float32)  # (numel,)
        w = weights[rows]  # (k,)
        total = float(w.sum())
        for sl, stack in blocks(members, name, rows):
            order, values, ws, cum = _sorted_block(stack, w)
            out[sl], per_value = kernel(values, ws, cum, total)
            share[rows] += np.bincount(order.ravel(), per_value.ravel(), minlength=len(rows))
        coords[rows] += first.size
        delta[name] = out.reshape(first.shape)
    scores = {m.client_id: {score: float(share[i] / coords[i])} for i, m in enumerate(members)}
    return RuleOutput(delta, tuple(m.client_id for m in members), scores)


def trimmed_mean(members: Sequence[Member], params: RobustParams) -> RuleOutput:
    """Coordinate-wise β-trimmed weighted mean (β = params.trim_fraction, per side)."""
    out = _coordinatewise(members, _trim_kernel(params.trim_fraction), "trimmed_share")
    return RuleOutput(
        out.delta, out.selected, out.scores, extra={"trim_fraction": params.trim_fraction}
    )


def median(members: Sequence[Member], params: RobustParams) -> RuleOutput:
    """Coordinate-wise weighted median."""
    return _coordinatewise(members, _median_kernel, "median_share")
