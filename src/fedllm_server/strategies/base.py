"""The Strategy contract, and what a strategy returns.

Rules: a strategy is built once from its settings (`registry.make_strategy`) and holds nothing
but them. Its state (FedOpt's moments) goes in and out explicitly and is saved as arrays plus
scalars. Aggregation is fold-then-finish over a `WeightedSum`: `fold` weighs one
`AcceptedUpdate` (Δ_i = θ_i − θ^{base_i}, float32, a GSFS partial update carries a subset of
the names) and adds it, `finish` applies the sum to θ^v. The engine and `aggregate` below run
exactly the same calls. Strategies never mutate the caller's arrays, read a clock, log or
sample; which schedule runs them is theirs to say (`make_schedule`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.strategies.weighted_sum import WeightedSum
from fedllm_server.tensors import Array, TensorDict, l2_norm

if TYPE_CHECKING:
    from fedllm_server.schedule.base import Schedule, ScheduleContext
    from fedllm_server.strategies.settings import ValidationSettings

__all__ = [
    "AggregationMetrics",
    "Array",
    "EmptyAggregationError",
    "Strategy",
    "StrategyResult",
    "TensorDict",
    "Weighing",
    "aggregate",
    "apply_step",
    "l2_norm",
]

S = TypeVar("S")


@dataclass(frozen=True)
class Weighing:
    """What is known when an update is folded besides the update itself."""

    version: int  # v, the current global version (staleness s_i = v − base_i)
    frequency: int = 1  # f_i, from the GSFS schedule (1 for synchronous rounds)


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
    # The robust rule's record (rule, selected, rejected, per-client scores); {} for "none".
    robust: dict[str, Any] = field(default_factory=dict)
    # Central DP: the noised mean's record, then the accountant's ε (the engine adds it).
    privacy: dict[str, Any] = field(default_factory=dict)

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
            "robust": dict(self.robust),
            "privacy": dict(self.privacy),
        }

    @classmethod
    def of(
        cls,
        strategy: str,
        version: int,
        acc: WeightedSum,
        step_norm: float,
        extra: dict[str, float] | None = None,
        robust: dict[str, Any] | None = None,
        privacy: dict[str, Any] | None = None,
    ) -> AggregationMetrics:
        """The record of the aggregation folded in `acc` (before `acc` is reset)."""
        return cls(
            strategy=strategy,
            version=version,
            clients=tuple(acc.clients),
            weights=acc.normalised_weights(),
            update_norms=dict(acc.norms),
            step_norm=step_norm,
            tensor_clients=acc.tensor_clients,
            excluded=dict(acc.excluded),
            extra=extra or {},
            robust=robust or {},
            privacy=privacy or {},
        )


@dataclass(frozen=True)
class StrategyResult(Generic[S]):
    """New global model, new strategy state, and the metrics record."""

    global_tensors: TensorDict
    state: S
    metrics: AggregationMetrics


class EmptyAggregationError(ValueError):
    """Asked to aggregate no updates: the caller decides what an empty round means."""


class Strategy(Protocol):
    """How updates are weighed and applied; one module per strategy, one registry line."""

    name: str  # the settings' `name` ("fedavg", "fedopt", "gsfs")
    partial_updates: bool  # accepts a subset of the global tensors (else every one is needed)

    def make_schedule(self, ctx: ScheduleContext) -> Schedule:
        """The schedule that runs this strategy, restored from `ctx.meta`."""
        ...

    def max_lag(self, validation: ValidationSettings) -> int:
        """Versions an update may lag behind the current one and still be accepted."""
        ...

    def weight(self, update: AcceptedUpdate, at: Weighing) -> float:
        """The raw weight w_i before normalisation."""
        ...

    def fold(self, acc: WeightedSum, update: AcceptedUpdate, at: Weighing) -> None:
        """Add w_i·Δ_i to `acc`, or record in `acc` why the update is left out."""
        ...

    def finish(
        self, global_tensors: Mapping[str, Array], acc: WeightedSum, state: Any, new_version: int
    ) -> StrategyResult[Any]:
        """θ^{v+1} from θ^v and the sum in `acc` (consumed); raises EmptyAggregationError."""
        ...

    def initial_state(self) -> Any: ...

    def state_to_arrays(self, state: Any) -> tuple[TensorDict, dict[str, Any]]:
        """The state as checkpoint arrays plus plain-typed scalars."""
        ...

    def state_from_arrays(self, arrays: Mapping[str, Array], meta: Mapping[str, Any]) -> Any:
        """The state `state_to_arrays` wrote (the initial state when `meta` has none)."""
        ...


def aggregate(
    strategy: Strategy,
    global_tensors: Mapping[str, Array],
    updates: Iterable[AcceptedUpdate],
    state: Any,
    new_version: int,
    frequencies: Mapping[str, int] | None = None,
) -> StrategyResult[Any]:
    """One aggregation of `updates` into version `new_version`, the engine's way: fold each
    (f_i from `frequencies` by client id, default 1), then finish."""
    acc = WeightedSum()
    freqs = frequencies or {}
    for update in updates:
        at = Weighing(new_version - 1, freqs.get(update.client_id, 1))
        strategy.fold(acc, update, at)
    return strategy.finish(global_tensors, acc, state, new_version)


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
