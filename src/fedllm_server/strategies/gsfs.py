"""GSFS aggregation (paper eq. 13–14): θ^{v+1} = θ^v + η_s · Σ_{i∈S} α_i · U_i.

Rules: α_i = w_i / Σ_{j∈S} w_j with w_i = f_i (the client's upload count over the frequency
window, filled in by the pool), times n_i when `sample_weighting`, times (1+s_i)^(−a) with
s_i = v − base_i when `staleness_exponent` a > 0. Partial updates: each tensor is normalised over
the clients that sent it, so a tensor sent by one client moves by η_s·U_i for that tensor. No
strategy state here: the frequencies live in the pool (`fedllm_server.pool`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fedllm_server.strategies.base import (
    AggregationMetrics,
    Array,
    ClientUpdate,
    EmptyAggregationError,
    StrategyResult,
    apply_step,
)
from fedllm_server.strategies.settings import GsfsServerSettings
from fedllm_server.strategies.weighted_sum import WeightedSum


def staleness(update: ClientUpdate, current_version: int) -> int:
    """s_i = v − base_i (0 for an update based on the current global model)."""
    return max(0, current_version - update.base_version)


def weight(update: ClientUpdate, current_version: int, settings: GsfsServerSettings) -> float:
    """Unnormalised w_i = f_i · [n_i] · (1+s_i)^(−a)."""
    w = float(update.frequency)
    if settings.sample_weighting:
        w *= update.sample_count
    if settings.staleness_exponent > 0:
        w *= (1.0 + staleness(update, current_version)) ** (-settings.staleness_exponent)
    return w


def _exclusion(update: ClientUpdate, current_version: int, settings: GsfsServerSettings) -> str:
    bound = settings.max_staleness
    if bound is not None and staleness(update, current_version) > bound:
        return "too_stale"
    if update.frequency < 1:
        return "zero_frequency"
    return ""


def aggregate(
    global_tensors: Mapping[str, Array],
    updates: Iterable[ClientUpdate],
    current_version: int,
    settings: GsfsServerSettings,
    acc: WeightedSum | None = None,
) -> StrategyResult[None]:
    """One GSFS aggregation of the pooled updates into version current_version + 1.

    ``acc``: an empty accumulator to work in (a daemon passes one that keeps its buffers from
    one aggregation to the next); a fresh one by default.
    """
    acc = WeightedSum() if acc is None else acc
    excluded: dict[str, str] = {}
    worst = 0
    for update in updates:
        reason = _exclusion(update, current_version, settings)
        if reason:
            excluded[update.client_id] = reason
            continue
        worst = max(worst, staleness(update, current_version))
        w = weight(update, current_version, settings)
        acc.add(update.client_id, update.tensors, w, update.norm)
    if len(acc) == 0:
        raise EmptyAggregationError(f"gsfs: no updates left to aggregate (excluded {excluded})")
    weights, tensor_clients = acc.normalised_weights(), acc.tensor_clients
    new_global, step_norm = apply_step(global_tensors, acc.take_mean(settings.server_lr))
    metrics = AggregationMetrics(
        strategy="gsfs",
        version=current_version + 1,
        clients=tuple(acc.clients),
        weights=weights,
        update_norms=dict(acc.norms),
        step_norm=step_norm,
        tensor_clients=tensor_clients,
        excluded={**excluded, **acc.excluded},
        extra={"max_staleness_included": float(worst)},
    )
    return StrategyResult(new_global, None, metrics)
