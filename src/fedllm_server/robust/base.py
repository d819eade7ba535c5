"""What every robust rule shares: the input type, validation, per-tensor block stacks, the result.

Rules of this file: an update is a delta Δ_i (name -> float32 array) that may carry only a subset
of the tensor names (a GSFS partial update); the caller's arrays are never written. A member is a
validated update with its ‖Δ_i‖₂ (computed in float64, so a finite float32 update never
overflows) and the scale a clipping step gave it; rules read Δ_i only through `scale · Δ_i`, so
clipping costs no copy. Coordinate rules read the updates one tensor and one block of
coordinates at a time: the stack they sort is (clients that sent the tensor, block) float64 with
at most STACK_ELEMENTS entries, whatever the model size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedllm_server.tensors import Array, TensorDict

F64 = npt.NDArray[np.float64]

# Entries of one (clients, block) float64 stack: 8 MiB; the sort and a kernel need ~6 more.
STACK_ELEMENTS = 1 << 20
NORM_BLOCK = 1 << 17  # float64 cast of a float32 block for ‖Δ‖₂ (1 MiB)


class NonFiniteUpdateError(ValueError):
    """An update holds a NaN or an inf: the rule refuses it by name rather than average it."""

    def __init__(self, client_id: str, tensor: str) -> None:
        super().__init__(f"update from {client_id!r}: tensor {tensor!r} holds NaN or inf")
        self.client_id = client_id
        self.tensor = tensor


@dataclass(frozen=True)
class Contribution:
    """One client's delta and its aggregation weight (≥ 0; 0 leaves the client out)."""

    client_id: str
    tensors: Mapping[str, Array]  # name -> Δ, shape of the global tensor, float32
    weight: float = 1.0


@dataclass(frozen=True)
class Member:
    """A validated contribution: its ‖Δ‖₂ and the scale every rule applies to it."""

    contribution: Contribution
    norm: float  # ‖Δ_i‖₂ over the tensors it carries
    scale: float = 1.0  # 1, or C/‖Δ_i‖₂ after clipping

    @property
    def client_id(self) -> str:
        return self.contribution.client_id

    @property
    def weight(self) -> float:
        return self.contribution.weight


@dataclass(frozen=True)
class RobustParams:
    """The knobs of every rule (each rule reads the ones it needs; defaults in docs/robust.md)."""

    trim_fraction: float = 0.2  # β: share of the weight trimmed from each side, in [0, 0.5)
    byzantine: int = 1  # f: updates assumed Byzantine (Krum)
    selected: int | None = None  # m: updates multi-Krum averages; None = n − f

    def __post_init__(self) -> None:
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.byzantine < 0:
            raise ValueError(f"byzantine must be >= 0, got {self.byzantine}")
        if self.selected is not None and self.selected < 1:
            raise ValueError(f"selected must be >= 1, got {self.selected}")


@dataclass(frozen=True)
class RuleOutput:
    """What a rule returns: the aggregated delta and its per-client findings."""

    delta: TensorDict  # only tensors at least one kept client sent
    selected: tuple[str, ...]  # clients whose update entered the aggregate
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # client -> score name -> v
    rejected: dict[str, str] = field(default_factory=dict)  # client -> why left out entirely
    extra: dict[str, float] = field(default_factory=dict)  # the rule's scalars


@dataclass(frozen=True)
class RobustResult:
    """A robust aggregation: Δ to apply, and the record for the metrics file."""

    rule: str
    delta: TensorDict  # name -> aggregated Δ (float32); tensors nobody kept sent are absent
    selected: tuple[str, ...]
    rejected: dict[str, str]
    scores: dict[str, dict[str, float]]  # client -> {"norm", "scale", rule scores...}
    tensor_clients: dict[str, int]  # clients that sent each tensor (before the rule chose)
    extra: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The metrics record (the delta stays out: it is the model step, not a metric)."""
        return {
            "rule": self.rule,
            "selected": list(self.selected),
            "rejected": dict(self.rejected),
            "scores": {cid: dict(s) for cid, s in self.scores.items()},
            "tensor_clients": dict(self.tensor_clients),
            "extra": dict(self.extra),
        }


def finite_norm(client_id: str, tensors: Mapping[str, npt.NDArray[Any]]) -> float:
    """‖Δ‖₂ over every tensor, summed in float64 block by block; NaN/inf raise by name.

    float32 squares cannot overflow float64, so a non-finite sum means a non-finite entry.
    """
    total = 0.0
    for name, arr in tensors.items():
        flat = np.ascontiguousarray(arr).reshape(-1)  # (numel,) view
        squares = 0.0
        for start in range(0, flat.size, NORM_BLOCK):
            block = flat[start : start + NORM_BLOCK].astype(np.float64)  # (≤ NORM_BLOCK,)
            squares += float(np.dot(block, block))
        if not math.isfinite(squares):
            raise NonFiniteUpdateError(client_id, name)
        total += squares
    return math.sqrt(total)


def prepare(contributions: Sequence[Contribution]) -> tuple[list[Member], dict[str, str]]:
    """Validate every contribution (finite, one per client, same shape per name, weight ≥ 0).

    Returns the members and the clients left out for a zero weight (`zero_weight`).
    """
    members: list[Member] = []
    rejected: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    seen: set[str] = set()
    for c in contributions:
        if c.client_id in seen:
            raise ValueError(f"client {c.client_id!r} appears twice in one aggregation")
        seen.add(c.client_id)
        if not (math.isfinite(c.weight) and c.weight >= 0):
            raise ValueError(f"weight for {c.client_id!r} must be finite and >= 0: {c.weight}")
        for name, arr in c.tensors.items():
            if shapes.setdefault(name, arr.shape) != arr.shape:
                raise ValueError(f"tensor {name!r}: shape {arr.shape} != {shapes[name]}")
        norm = finite_norm(c.client_id, c.tensors)
        if c.weight == 0:
            rejected[c.client_id] = "zero_weight"
        else:
            members.append(Member(c, norm))
    return members, rejected


def senders(members: Sequence[Member]) -> dict[str, list[int]]:
    """Tensor name -> indices of the members that sent it, in member order."""
    out: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        for name in m.contribution.tensors:
            out.setdefault(name, []).append(i)
    return out


def blocks(
    members: Sequence[Member], name: str, rows: Sequence[int]
) -> Iterator[tuple[slice, F64]]:
    """(coordinate slice, stack) per block of tensor `name`; stack is (len(rows), block) float64
    holding scale_i · Δ_i over the members in `rows`. The stack buffer is reused between blocks."""
    first = members[rows[0]].contribution.tensors[name]
    size = first.size
    width = max(1, min(size, STACK_ELEMENTS // len(rows)))
    flats = [np.ascontiguousarray(members[r].contribution.tensors[name]).reshape(-1) for r in rows]
    scales = [np.float64(members[r].scale) for r in rows]
    buf = np.empty((len(rows), width), dtype=np.float64)  # (k, width)
    for start in range(0, size, width):
        stop = min(size, start + width)
        stack = buf[:, : stop - start]  # (k, b)
        for r, (flat, s) in enumerate(zip(flats, scales, strict=True)):
            np.multiply(flat[start:stop], s, out=stack[r])
        yield slice(start, stop), stack


def weighted_mean(members: Sequence[Member], rows: Sequence[int] | None = None) -> TensorDict:
    """Σ w_i·s_i·Δ_i / Σ w_i per tensor over the members in `rows` that sent it (float64 sums).

    O(model) memory: one float64 sum per tensor; the updates are read once, in place.
    """
    chosen = range(len(members)) if rows is None else rows
    sums: dict[str, F64] = {}
    totals: dict[str, list[float]] = {}
    for i in chosen:
        m = members[i]
        factor = np.float64(m.weight * m.scale)
        for name, arr in m.contribution.tensors.items():
            term = np.multiply(arr, factor, dtype=np.float64)  # (shape) float64
            if name in sums:
                sums[name] += term
            else:
                sums[name] = term
            totals.setdefault(name, []).append(m.weight)
    return {name: (acc / math.fsum(totals[name])).astype(np.float32) for name, acc in sums.items()}
