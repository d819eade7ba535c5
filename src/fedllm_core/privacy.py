"""Local DP, what both daemons share: the noise source, clipping, a client's privatised delta.

Rules: pure functions; randomness comes in as a `NoiseSource` the way the clock comes in as
`now` elsewhere (`SystemRandom`, the kernel's CSPRNG, in production; `SeededSource` only in
tests and benchmarks). Local mode (`[privacy] mode = "local"` on both sides) releases
clip_C(Δ) + N(0, σ²C²·I) on every tensor a client sends; the server only accounts for it
(fedllm_server.privacy). Both sides must use the same C and σ: `federation_fingerprint`
folds them into the fingerprint of Hello, so a client and a server that disagree never pair.
With DP off the fingerprint is the model's, unchanged. Guarantee and caveats: docs/privacy.md.

Why not numpy's Generator seeded from `secrets`: PCG64 and Philox are statistical generators;
an unguessable seed does not stop anyone from recovering their state from outputs, and DP
assumes nobody can predict the noise. `SystemRandom` reads `os.urandom` (getrandom(2)) and
turns 53-bit uniforms into normals by Box–Muller in float64; the noised result is rounded once
to float32 (not a discrete Gaussian: Mironov 2012's low-bit attacks are not ruled out).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field

from fedllm_core.settings import FrozenSettings

F64 = npt.NDArray[np.float64]
Array = npt.NDArray[Any]
NOISE_BLOCK = 1 << 16  # normals drawn per call when noising a tensor (512 KiB of float64)
NORM_BLOCK = 1 << 17  # float64 cast of a float32 block for ‖Δ‖₂ (1 MiB)


class NoiseSource(Protocol):
    """Uniforms in [0, 1) and standard normals, float64."""

    def uniform(self, n: int) -> F64: ...

    def standard_normal(self, n: int) -> F64: ...


class SystemRandom:
    """The kernel's CSPRNG (`os.urandom`): the source for every real DP mechanism."""

    def uniform(self, n: int) -> F64:
        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)  # (n,)
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # k/2^53, k < 2^53

    def standard_normal(self, n: int) -> F64:
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)  # (2·pairs,)
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 − u ∈ (0, 1]: log is finite
        angle = (2.0 * np.pi) * u[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


class SeededSource:
    """numpy PCG64 with a fixed seed: reproducible, NOT a CSPRNG (tests and benchmarks only)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def uniform(self, n: int) -> F64:
        return self._rng.random(n)

    def standard_normal(self, n: int) -> F64:
        return self._rng.standard_normal(n)


class ConstantSource:
    """Every normal is ``value`` and every uniform 0.5 (tests only): 0 is no noise, 1 is
    exactly one standard deviation on every coordinate, so a test can compute the answer."""

    def __init__(self, value: float) -> None:
        self.value = value

    def uniform(self, n: int) -> F64:
        return np.full(n, 0.5)

    def standard_normal(self, n: int) -> F64:
        return np.full(n, self.value)


def add_gaussian(flat: F64, std: float, source: NoiseSource) -> None:
    """flat += N(0, std²) in place, drawn block by block (memory O(NOISE_BLOCK))."""
    for start in range(0, flat.size, NOISE_BLOCK):
        block = flat[start : start + NOISE_BLOCK]
        block += std * source.standard_normal(block.size)


def l2_norm(tensors: Mapping[str, Array]) -> float:
    """‖Δ‖₂ over every tensor, summed in float64 block by block (inf or NaN if an entry is)."""
    total = 0.0
    for arr in tensors.values():
        flat = np.ascontiguousarray(arr).reshape(-1)  # (numel,) view
        for start in range(0, flat.size, NORM_BLOCK):
            block = flat[start : start + NORM_BLOCK].astype(np.float64)  # (≤ NORM_BLOCK,)
            total += float(np.dot(block, block))
    return math.sqrt(total)


def clip_scale(norm: float, clip_norm: float) -> float:
    """min(1, C/‖Δ‖₂); 0 for a non-finite norm (the delta is replaced by the zero vector)."""
    if not math.isfinite(norm):
        return 0.0
    return 1.0 if norm <= clip_norm else clip_norm / norm


@dataclass(frozen=True)
class LocalDp:
    """The parameters of local mode, as both sides must agree on them."""

    clip_norm: float  # C, the L2 bound of one upload
    noise_multiplier: float  # σ: noise std = σ·C per coordinate

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value}")


@dataclass(frozen=True)
class LocalReport:
    """One locally privatised delta: its norm before clipping, the scale, the noise std."""

    norm: float  # ‖Δ‖₂ before clipping (inf/NaN: the delta was not finite and replaced by 0)
    scale: float  # min(1, C/‖Δ‖₂)
    noise_std: float  # σ·C per coordinate


def local_privatise(
    tensors: Mapping[str, Array], dp: LocalDp, source: NoiseSource
) -> tuple[dict[str, Array], LocalReport]:
    """clip_C(Δ) + N(0, σ²C²) on every tensor given (float32, new arrays).

    The client must send every tensor (no partial update): which tensors it leaves out would
    otherwise be a release the noise does not cover. A non-finite Δ is clipped to 0 (the zero
    vector is inside the ball, so noise alone goes out and the guarantee holds).
    """
    norm = l2_norm(tensors)
    scale = clip_scale(norm, dp.clip_norm)
    std = dp.noise_multiplier * dp.clip_norm
    out: dict[str, Array] = {}
    for name, arr in tensors.items():
        noised = (
            np.multiply(arr, scale, dtype=np.float64)  # (shape) float64: one rounding at the end
            if scale > 0
            else np.zeros(np.shape(arr), dtype=np.float64)
        )
        add_gaussian(noised.reshape(-1), std, source)
        out[name] = noised.astype(np.float32)
    return out, LocalReport(norm, scale, std)


class LocalPrivacySettings(FrozenSettings):
    """The client's `[privacy]`: local DP of its own uploads (docs/privacy.md)."""

    mode: Literal["off", "local"] = "off"
    clip_norm: float = Field(default=1.0, gt=0, description="C, the L2 bound of one upload")
    noise_multiplier: float = Field(default=1.0, gt=0, description="σ: noise std = σ·C")

    def local_dp(self) -> LocalDp | None:
        """The local-mode parameters, or None when this client does not privatise."""
        return LocalDp(self.clip_norm, self.noise_multiplier) if self.mode == "local" else None


def federation_fingerprint(model_fingerprint: str, dp: LocalDp | None) -> str:
    """What Hello carries: the model's fingerprint, with local DP's C and σ folded in (sha256
    hex); unchanged when local DP is off, so such federations pair as before."""
    if dp is None:
        return model_fingerprint
    identity = {
        "model": model_fingerprint,
        "privacy": {"mode": "local", "clip_norm": dp.clip_norm, "sigma": dp.noise_multiplier},
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def privacy_part(dp: LocalDp | None) -> str:
    """Hello's ``fingerprint_parts["privacy"]``: a short hash of the local-DP setting (off, or
    C and σ), so a mismatch caused by it is named as such."""
    identity: dict[str, object] = {"mode": "off"}
    if dp is not None:
        identity = {"mode": "local", "clip_norm": dp.clip_norm, "sigma": dp.noise_multiplier}
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differing_parts(ours: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """The fingerprint parts both sides sent that differ (none when the peer sent no parts)."""
    return sorted(part for part, value in ours.items() if part in theirs and theirs[part] != value)


# What each part covers, in the words of the settings an operator would change.
PART_SETTINGS = {
    "base_model": "[model] name (random_init: config_overrides, base_seed)",
    "lora": "[model] lora_r / lora_alpha / lora_dropout / target_modules / train_head",
    "labels": "[data] task (the label set)",
    "template": "[data] template (name@version)",
    "privacy": "[privacy] mode / clip_norm / noise_multiplier",
}


def mismatch_detail(differing: list[str]) -> str:
    """The REJECT detail for a fingerprint mismatch: which parts differ, if the peer said."""
    if not differing:
        return "model fingerprint (or local DP's clip_norm / noise_multiplier) differs"
    named = "; ".join(f"{part}: {PART_SETTINGS.get(part, part)}" for part in differing)
    return f"model fingerprint differs in {named}"
