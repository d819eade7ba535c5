"""Pure federated strategies over TensorDicts: FedAvg, FedOpt (adam/yogi/adagrad), GSFS.

Each module exposes `aggregate(...) -> StrategyResult` (new global, new state, metrics) and the
pieces to fold updates on arrival (`weight`, `WeightedSum.add`, `finish`). Formulas and settings:
docs/strategies.md; the spec is gsfs.md.
"""

from fedllm_server.strategies import fedavg, fedopt, gsfs
from fedllm_server.strategies.base import (
    AggregationMetrics,
    ClientUpdate,
    EmptyAggregationError,
    StrategyResult,
    TensorDict,
    apply_step,
    l2_norm,
)
from fedllm_server.strategies.fedopt import FedOptState
from fedllm_server.strategies.settings import (
    FedAvgSettings,
    FedOptSettings,
    GsfsServerSettings,
    StrategySettings,
    ValidationSettings,
)
from fedllm_server.strategies.weighted_sum import WeightedSum

__all__ = [
    "AggregationMetrics",
    "ClientUpdate",
    "EmptyAggregationError",
    "FedAvgSettings",
    "FedOptSettings",
    "FedOptState",
    "GsfsServerSettings",
    "StrategyResult",
    "StrategySettings",
    "TensorDict",
    "ValidationSettings",
    "WeightedSum",
    "apply_step",
    "fedavg",
    "fedopt",
    "gsfs",
    "l2_norm",
]
