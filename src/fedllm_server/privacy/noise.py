"""Where DP noise comes from: the operating system's CSPRNG, behind a two-method interface.

Rules: every mechanism takes its randomness as an argument (a `NoiseSource`), the way the
coordinator takes `now`: the functions stay pure and a test can pass a seeded source. The
default, `SystemRandom`, reads `os.urandom` (getrandom(2): the kernel's ChaCha20 CSPRNG) and
turns 53-bit uniforms into normals by Box–Muller in float64.

Why not numpy's Generator seeded from `secrets`: PCG64 and Philox are statistical generators.
A 128-bit seed from `secrets` makes the stream unguessable before it is used, but nothing
prevents recovering the generator's state from outputs it produced, and DP's guarantee
assumes the noise is unpredictable to everyone but the process that draws it. The price is
speed: 0.04 s per million normals on the 2-core development VM (best of three), four times
PCG64 (bench/privacy_accounting.py prints both), once per aggregation: small next to a round.
`SeededSource` is numpy's PCG64 with a fixed seed: reproducible, for tests and benchmarks
only, never for privacy.

Floating point: samples are float64 and the noised result is rounded once to float32. Like any
floating-point Gaussian, this is not the discrete Gaussian of Canonne et al. 2020; the attacks of
Mironov 2012 on the low bits of floating-point noise are not ruled out (docs/privacy.md).
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

NOISE_BLOCK = 1 << 16  # normals drawn per call when noising a tensor (512 KiB of float64)


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


def add_gaussian(flat: F64, std: float, source: NoiseSource) -> None:
    """flat += N(0, std²) in place, drawn block by block (memory O(NOISE_BLOCK))."""
    for start in range(0, flat.size, NOISE_BLOCK):
        block = flat[start : start + NOISE_BLOCK]
        block += std * source.standard_normal(block.size)
