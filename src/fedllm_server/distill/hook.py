"""The engine's one distillation hook, torch-free so the engine stays numpy only.

After the strategy has produced θ^{v+1} the engine offers it to its `Refiner` (None: no
refinement, the default); a `Refined` result replaces θ^{v+1} before it is encoded,
checkpointed and broadcast, and its report goes into the aggregation record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fedllm_server.tensors import TensorDict


@dataclass(frozen=True)
class Refined:
    """A replacement θ^{v+1} and what was done to make it (JSON scalars)."""

    tensors: TensorDict
    report: Mapping[str, float | int]


class Refiner(Protocol):
    def refine(self, tensors: TensorDict, version: int) -> Refined | None:
        """θ^{version} refined, or None when this version is left as aggregated."""
        ...
