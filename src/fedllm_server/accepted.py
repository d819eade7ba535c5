"""The one record of an accepted upload, made once at the door and used by everything after it.

Rules: `validation.check_update` builds an `AcceptedUpdate` when an update passes every check,
with the door's ‖Δ‖₂ in `norm`; the pool log writes it (all fields but `norm`, which a replay
measures again), the engine holds it until it is folded, the schedules read its metadata and
the strategies weigh and fold it. Nobody copies it into another type. Frozen; its tensors are
the received arrays (views into the transport's receive buffer, which is reused only once
nothing points into it), never written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedllm_server.tensors import TensorDict, nbytes


@dataclass(frozen=True)
class AcceptedUpdate:
    """One client's accepted delta Δ_i = θ_i − θ^{base_version}, with its metadata."""

    client_id: str
    update_id: str  # unique per upload (the replay key)
    base_version: int  # v_i, the global version the client started from
    round: int  # the synchronous round it answers; -1 for GSFS
    sample_count: int  # n_i
    trigger: str  # round | performance | gradient_norm | max_silence
    accepted_at: float  # wall clock (unix seconds) when the door accepted it
    metrics: Mapping[str, float]  # the client's local metrics, as sent
    tensors: TensorDict  # name -> Δ (a GSFS partial update carries a subset of the names)
    norm: float  # ‖Δ‖₂ over every tensor (the door's; finite)

    @property
    def nbytes(self) -> int:
        return nbytes(self.tensors)
