"""FedAvg (McMahan et al. 2017) over deltas: θ^{v+1} = θ^v + Σ_i (n_i/Σ_j n_j)·Δ_i.

Rules: equal to Σ_i (n_i/Σn)·θ_i because every Δ_i is based on θ^v (synchronous round). No
strategy state (`None` in and out). Updates are folded one at a time, so a caller may pass a
generator, or fold on arrival with `weight` + `WeightedSum.add` and call `finish`.
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
from fedllm_server.strategies.settings import FedAvgSettings
from fedllm_server.strategies.weighted_sum import WeightedSum


def weight(update: ClientUpdate, settings: FedAvgSettings) -> float:
    """Raw weight before normalisation: n_i, or 1 when sample weighting is off."""
    return float(update.sample_count) if settings.sample_weighting else 1.0


def fold(updates: Iterable[ClientUpdate], settings: FedAvgSettings) -> WeightedSum:
    acc = WeightedSum()
    for update in updates:
        acc.add(update.client_id, update.tensors, weight(update, settings), update.norm)
    return acc


def finish(
    global_tensors: Mapping[str, Array], acc: WeightedSum, new_version: int
) -> StrategyResult[None]:
    """Apply the averaged delta held in `acc` (consumed) to θ^v."""
    if len(acc) == 0:
        raise EmptyAggregationError("fedavg: no updates to aggregate")
    weights, tensor_clients = acc.normalised_weights(), acc.tensor_clients
    new_global, step_norm = apply_step(global_tensors, acc.take_mean())
    metrics = AggregationMetrics(
        strategy="fedavg",
        version=new_version,
        clients=tuple(acc.clients),
        weights=weights,
        update_norms=dict(acc.norms),
        step_norm=step_norm,
        tensor_clients=tensor_clients,
        excluded=dict(acc.excluded),
    )
    return StrategyResult(new_global, None, metrics)


def aggregate(
    global_tensors: Mapping[str, Array],
    updates: Iterable[ClientUpdate],
    settings: FedAvgSettings,
    new_version: int,
) -> StrategyResult[None]:
    """One FedAvg aggregation: θ^{v+1} = θ^v + Σ (n_i/Σn) Δ_i."""
    return finish(global_tensors, fold(updates, settings), new_version)
