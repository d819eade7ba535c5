"""A poisoned client, for measuring defences: the `[attack]` settings and what they change.

Rules: off by default, and nothing but the experiment's poisoning runs (`fedllm experiment
--attack ...`, bench/poisoning.py) should turn it on. The attacker is the ordinary client
daemon with one thing changed, so the server sees exactly what a compromised member would
send: `signflip` uploads −factor·Δ, `scale` uploads factor·Δ, `labelflip` trains on flipped
labels (class y becomes (y + 1) mod K, so a binary task swaps benign and malicious) and
uploads its honest-looking Δ. The flooding attack on GSFS needs no code: it is a trigger that
fires every step (`fedllm_experiment.deploy`). Pure functions; new arrays, never in place.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from fedllm_core.settings import FrozenSettings
from fedllm_proto.codec import TensorDict

AttackKind = Literal["none", "signflip", "scale", "labelflip"]


class AttackSettings(FrozenSettings):
    """`[attack]`: how this client poisons what it sends (docs/robust.md, "Attacks")."""

    kind: AttackKind = "none"
    factor: float = Field(default=10.0, gt=0, description="signflip: −factor·Δ; scale: factor·Δ")


def poison_delta(delta: TensorDict, attack: AttackSettings) -> TensorDict:
    """Δ as this client uploads it: unchanged unless the attack rewrites the update."""
    if attack.kind == "signflip":
        gain = np.float32(-attack.factor)
    elif attack.kind == "scale":
        gain = np.float32(attack.factor)
    else:
        return delta
    return {name: np.multiply(arr, gain, dtype=np.float32) for name, arr in delta.items()}


def poison_labels(
    labels: npt.NDArray[np.int64], classes: int, attack: AttackSettings
) -> npt.NDArray[np.int64]:
    """The training labels this client learns from: (y + 1) mod K under labelflip."""
    if attack.kind != "labelflip":
        return labels
    return (labels + 1) % classes
