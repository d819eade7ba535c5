"""Krum and multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018) over flattened updates.

Rules: with n updates of which f may be Byzantine, the score of update i is the sum of its
squared L2 distances to its n − f − 2 nearest other updates; the m updates with the lowest
scores are selected (ties: the earlier in input order) and averaged with their weights, per
tensor over the selected clients that sent it. Krum is m = 1; multi-Krum defaults to m = n − f.
Krum's guarantee needs n ≥ 2f + 3, and m > n − f could admit a Byzantine update: both are
refused. Selection ignores the weights (it is geometric), so an inflated weight cannot buy
selection.

Partial updates: distances are taken in the full model space with a tensor a client did not send
counted as a zero delta (a GSFS partial update leaves out exactly the tensors whose change was
insignificant). Omitting tensors therefore neither hides an update nor shrinks its distances to
the others below what the zeros imply.

Memory: an n × n float64 Gram matrix, accumulated per tensor and per (senders, block) stack, so
O(n² + STACK_ELEMENTS) beyond the updates the caller holds, never the n stacked models.
‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b is computed in float64 and clamped at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedllm_server.robust.base import (
    F64,
    Member,
    RobustParams,
    RuleOutput,
    blocks,
    senders,
    weighted_mean,
)


def squared_distances(members: Sequence[Member]) -> F64:
    """(n, n) ‖s_i·Δ_i − s_j·Δ_j‖² with missing tensors as zeros; diagonal 0."""
    n = len(members)
    gram = np.zeros((n, n), dtype=np.float64)  # (n, n) Σ a_i·a_j over every coordinate
    for name, rows in senders(members).items():
        idx = np.ix_(rows, rows)
        for _, stack in blocks(members, name, rows):
            gram[idx] += stack @ stack.T  # (k, b) @ (b, k)
    sq = np.diag(gram).copy()  # (n,) ‖a_i‖²
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def krum_scores(dist: F64, byzantine: int) -> F64:
    """(n,) Σ of each row's n − f − 2 smallest off-diagonal squared distances."""
    n = dist.shape[0]
    if n < 2 * byzantine + 3:
        raise ValueError(f"krum needs n >= 2f + 3 updates: n = {n}, f = {byzantine}")
    off = dist + np.diag(np.full(n, np.inf))  # a point is not its own neighbour
    nearest = np.sort(off, axis=1)[:, : n - byzantine - 2]  # (n, n − f − 2)
    return nearest.sum(axis=1)


def _select(members: Sequence[Member], byzantine: int, m: int) -> RuleOutput:
    n = len(members)
    if not 1 <= m <= n - byzantine:
        raise ValueError(f"multi-krum selects 1 <= m <= n - f: m = {m}, n = {n}, f = {byzantine}")
    scores = krum_scores(squared_distances(members), byzantine)
    chosen = sorted(np.argsort(scores, kind="stable")[:m].tolist())  # input order
    ids, kept = [mem.client_id for mem in members], set(chosen)
    return RuleOutput(
        weighted_mean(members, chosen),
        tuple(ids[i] for i in chosen),
        scores={cid: {"krum_score": float(s)} for cid, s in zip(ids, scores, strict=True)},
        rejected={ids[i]: "not_selected" for i in range(n) if i not in kept},
        extra={"byzantine": float(byzantine), "selected": float(m)},
    )


def krum(members: Sequence[Member], params: RobustParams) -> RuleOutput:
    """Krum: the single update closest to its n − f − 2 neighbours."""
    return _select(members, params.byzantine, 1)


def multi_krum(members: Sequence[Member], params: RobustParams) -> RuleOutput:
    """Multi-Krum: the mean of the m best-scored updates (m = params.selected or n − f)."""
    m = params.selected if params.selected is not None else len(members) - params.byzantine
    return _select(members, params.byzantine, m)
