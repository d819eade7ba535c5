"""The server's tensor types and the norm every layer agrees on.

Rules: the federated state θ and every delta Δ are `TensorDict`s, name -> C-contiguous float32
array (docs/architecture.md); `TensorDict` is the wire's one definition (fedllm_proto.codec),
re-exported here so server modules name one server-side tensor module. `l2_norm` is the door's
‖Δ‖₂: the pool log, the strategies and the metrics all use the value it gives, so a client's
norm reads the same everywhere.
No I/O, clock or threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedllm_proto.codec import TensorDict

__all__ = ["Array", "TensorDict", "l2_norm", "nbytes"]

Array = npt.NDArray[np.float32]  # one float32 tensor of θ or Δ


def l2_norm(tensors: Mapping[str, npt.NDArray[Any]]) -> float:
    """‖x‖₂ over every tensor with O(1) extra memory (BLAS dot per tensor, summed in float64).

    A non-finite entry, or squares overflowing float32, gives inf: callers that must tell the
    two apart check `np.isfinite` only on that rare path.
    """
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as inf
        for arr in tensors.values():
            flat = arr.reshape(-1)  # (numel,) view of a C-contiguous array
            total += float(np.dot(flat, flat))
    return math.sqrt(total) if math.isfinite(total) else math.inf


def nbytes(tensors: Mapping[str, npt.NDArray[Any]]) -> int:
    """Payload bytes of a TensorDict (what an update weighs on the wire, before encoding)."""
    return sum(int(t.nbytes) for t in tensors.values())
