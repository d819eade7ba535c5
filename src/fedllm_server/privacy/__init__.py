"""DP-FedAvg building blocks: clipping, Gaussian noise from a CSPRNG, and an accountant.

Rules: pure functions and immutable values; randomness is an argument (`NoiseSource`, the
kernel's CSPRNG by default in callers), nothing is logged. Central mode noises the clipped sum
on the server (`central_noised_mean`); local mode noises one client's delta on the client
(`local_privatise`, from fedllm_core.privacy) and the server only accounts for it;
`PrivacyAccountant` turns the events into ε per client and for the
federation and refuses to pass a budget. What each guarantee covers, and how GSFS's
data-dependent trigger is accounted: docs/privacy.md.
"""

from fedllm_core.privacy import (
    LocalDp,
    LocalReport,
    NoiseSource,
    SeededSource,
    SystemRandom,
    add_gaussian,
    clip_scale,
    local_privatise,
)
from fedllm_server.privacy.accountant import (
    METHODS,
    AccountantConfig,
    GaussianEvents,
    Ledger,
    Method,
    PrivacyAccountant,
    PrivacyBudgetExceededError,
    compose,
    epsilon,
    noise_multiplier_for,
)
from fedllm_server.privacy.mechanism import (
    DpMeanReport,
    central_noised_mean,
    clip_delta,
    poisson_sample,
)
from fedllm_server.privacy.settings import PrivacySettings

__all__ = [
    "METHODS",
    "AccountantConfig",
    "DpMeanReport",
    "GaussianEvents",
    "Ledger",
    "LocalDp",
    "LocalReport",
    "Method",
    "NoiseSource",
    "PrivacyAccountant",
    "PrivacyBudgetExceededError",
    "PrivacySettings",
    "SeededSource",
    "SystemRandom",
    "add_gaussian",
    "central_noised_mean",
    "clip_delta",
    "clip_scale",
    "compose",
    "epsilon",
    "local_privatise",
    "noise_multiplier_for",
    "poisson_sample",
]
