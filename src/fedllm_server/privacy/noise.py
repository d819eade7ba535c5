"""Where DP noise comes from: the kernel's CSPRNG behind a two-method interface.

The source and `add_gaussian` live in `fedllm_core.privacy` (the client draws local-mode noise
from the same code); this module names them for the server's mechanisms. Why a CSPRNG and not
numpy's Generator, and the floating-point caveat: the header of fedllm_core/privacy.py. Cost:
0.04 s per million normals on the 2-core development VM (best of three), four times PCG64
(bench/privacy_accounting.py prints both), once per aggregation.
"""

from fedllm_core.privacy import (
    F64,
    NOISE_BLOCK,
    NoiseSource,
    SeededSource,
    SystemRandom,
    add_gaussian,
)

__all__ = ["F64", "NOISE_BLOCK", "NoiseSource", "SeededSource", "SystemRandom", "add_gaussian"]
