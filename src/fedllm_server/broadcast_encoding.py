"""`[broadcast] encoding`: the global model sent lossy, and the server's θ^v the decoded tensors.

Rules: after an aggregation the engine asks `choose` for the encoding of the new version and
keeps the *decoded* tensors as θ^v (checkpoint, evaluation, the next aggregation), so every
client that decodes the broadcast holds the server's model bit for bit: nothing drifts and no
per-client state is needed. The error is measured against this version's step,
    err = ‖Q(θ^{v+1}) − θ^{v+1}‖₂ / ‖θ^{v+1} − θ^v‖₂,
the same "relative reconstruction error of the delta" the clients' upload budget uses.
"adaptive" takes the smallest encoding (int8, then fp16) within `error_budget`, else raw; a
fixed encoding is used whatever its error (reported). Pure numpy through the wire codec, so
the decoded tensors are what a client's reader produces. Runs in the engine thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from fedllm_core.settings import FrozenSettings
from fedllm_proto.codec import Encoding, TensorDict, pack_tensors, unpack_tensors

CAPABILITY = "global_encodings"  # what a client's Hello lists when it decodes lossy models
ADAPTIVE_ORDER = (Encoding.INT8, Encoding.FP16)  # smallest first


class BroadcastSettings(FrozenSettings):
    """How new global versions travel to clients that can decode lossy ones."""

    encoding: Literal["raw", "fp16", "int8", "adaptive"] = "raw"
    error_budget: float = Field(default=0.05, gt=0, le=1, description="adaptive: max err")


@dataclass(frozen=True)
class Choice:
    encoding: Encoding
    tensors: TensorDict  # θ^{v+1} as the clients will decode it
    error: float  # err of the chosen encoding (0 for raw)


def roundtrip(tensors: Mapping[str, np.ndarray], encoding: Encoding) -> TensorDict:
    return unpack_tensors(pack_tensors(tensors, encoding))


def relative_error(decoded: Mapping[str, np.ndarray], new: TensorDict, old: TensorDict) -> float:
    """‖decoded − new‖ / ‖new − old‖ over every tensor (inf when the step is zero)."""
    err = step = 0.0
    for name, value in new.items():
        v = value.astype(np.float64)
        err += float(np.sum((decoded[name].astype(np.float64) - v) ** 2))
        step += float(np.sum((v - old[name].astype(np.float64)) ** 2)) if name in old else 0.0
    if err == 0.0:
        return 0.0
    return math.inf if step == 0.0 else math.sqrt(err / step)


def choose(settings: BroadcastSettings, new: TensorDict, old: TensorDict) -> Choice:
    """The encoding of version v+1 (`new`) given version v (`old`), and its decoded tensors."""
    if settings.encoding == "raw":
        return Choice(Encoding.RAW, new, 0.0)
    candidates = (
        ADAPTIVE_ORDER if settings.encoding == "adaptive" else (Encoding(settings.encoding),)
    )
    for encoding in candidates:
        decoded = roundtrip(new, encoding)
        error = relative_error(decoded, new, old)
        if settings.encoding != "adaptive" or error <= settings.error_budget:
            return Choice(encoding, decoded, error)
    return Choice(Encoding.RAW, new, 0.0)
