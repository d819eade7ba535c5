"""Federated strategies: FedAvg, FedOpt (adam/yogi/adagrad), GSFS, behind one `Strategy` contract.

Each strategy is a class in its own module (`fedavg`, `fedopt`, `gsfs`) built once by
`registry.make_strategy(settings)`; the arithmetic is fold-then-finish over a `WeightedSum`.
Formulas and settings: docs/strategies.md; the spec is gsfs.md. This package's own import is
light on purpose (the registry imports the schedules, which import the settings from here).
"""

from fedllm_server.strategies.base import (
    AggregationMetrics,
    EmptyAggregationError,
    Strategy,
    StrategyResult,
    TensorDict,
    Weighing,
    aggregate,
    apply_step,
    l2_norm,
)
from fedllm_server.strategies.settings import (
    FedAvgSettings,
    FedOptSettings,
    GsfsServerSettings,
    StrategySettingsBase,
    ValidationSettings,
)
from fedllm_server.strategies.weighted_sum import WeightedSum

__all__ = [
    "AggregationMetrics",
    "EmptyAggregationError",
    "FedAvgSettings",
    "FedOptSettings",
    "GsfsServerSettings",
    "Strategy",
    "StrategyResult",
    "StrategySettingsBase",
    "TensorDict",
    "ValidationSettings",
    "Weighing",
    "WeightedSum",
    "aggregate",
    "apply_step",
    "l2_norm",
]
