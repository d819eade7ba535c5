"""Local DP on the client: the mechanism against hand-computed values, its noise from the CSPRNG,
the fingerprint that pairs a client with a server of the same C and σ, and the upload encoder
privatising before anything else sees the delta."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedllm_client.compression import Compressor
from fedllm_client.settings import ClientSettings
from fedllm_core.privacy import (
    ConstantSource,
    LocalDp,
    LocalPrivacySettings,
    SeededSource,
    SystemRandom,
    federation_fingerprint,
    local_privatise,
)


def readonly(*values: float) -> dict[str, np.ndarray]:
    arr = np.array(values, dtype=np.float32)
    arr.flags.writeable = False  # the mechanism must not write the caller's delta
    return {"w": arr}


def test_a_delta_past_the_bound_is_clipped_to_it() -> None:
    # [6, 8] has norm 10; C = 5 -> scale 0.5 -> [3, 4]; no noise
    out, report = local_privatise(readonly(6, 8), LocalDp(5.0, 0.2), ConstantSource(0.0))
    assert (out["w"].tolist(), report.norm, report.scale) == ([3.0, 4.0], 10.0, 0.5)


def test_a_delta_inside_the_bound_is_not_scaled() -> None:
    out, report = local_privatise(readonly(3, 4), LocalDp(5.0, 0.2), ConstantSource(0.0))
    assert (out["w"].tolist(), report.scale) == ([3.0, 4.0], 1.0)


def test_the_noise_std_is_sigma_times_c() -> None:
    # clipped [3, 4] + σ·C = 0.2·5 = 1 per coordinate
    out, report = local_privatise(readonly(6, 8), LocalDp(5.0, 0.2), ConstantSource(1.0))
    assert (out["w"].tolist(), report.noise_std) == ([4.0, 5.0], 1.0)


def test_the_clip_norm_is_over_every_tensor_together() -> None:
    delta = {"a": np.array([6.0], np.float32), "b": np.array([8.0], np.float32)}
    out, _ = local_privatise(delta, LocalDp(5.0, 1.0), ConstantSource(0.0))
    assert (out["a"].tolist(), out["b"].tolist()) == ([3.0], [4.0])


def test_a_non_finite_delta_goes_out_as_noise_alone() -> None:
    out, report = local_privatise(readonly(1, math.inf), LocalDp(2.0, 0.5), ConstantSource(1.0))
    assert (out["w"].tolist(), report.scale) == ([1.0, 1.0], 0.0)


N_NOISE = 200_000  # standard error of the std: 0.0016·std


def test_csprng_noise_has_the_stated_std() -> None:
    zero = {"w": np.zeros(N_NOISE, dtype=np.float32)}
    out, report = local_privatise(zero, LocalDp(2.0, 0.75), SystemRandom())
    assert abs(out["w"].astype(np.float64).std() / report.noise_std - 1) < 0.02  # 12 s.e.


def test_csprng_noise_has_mean_zero() -> None:
    zero = {"w": np.zeros(N_NOISE, dtype=np.float32)}
    out, report = local_privatise(zero, LocalDp(2.0, 0.75), SystemRandom())
    assert abs(out["w"].astype(np.float64).mean()) < 0.02 * report.noise_std  # 9 s.e.


def test_the_released_norm_is_about_sigma_c_root_d() -> None:
    # a large delta clipped to C, plus d normals of std σC: ‖out‖² ≈ C² + σ²C²·d
    d, dp = 40_000, LocalDp(0.01, 1.0)
    big = {"w": np.full(d, 5.0, dtype=np.float32)}
    out, _ = local_privatise(big, dp, SeededSource(3))
    expected = dp.clip_norm * math.sqrt(1 + d * dp.noise_multiplier**2)
    assert float(np.linalg.norm(out["w"].astype(np.float64))) == pytest.approx(expected, rel=0.02)


def test_the_output_is_float32() -> None:
    out, _ = local_privatise(readonly(1, 2), LocalDp(1.0, 1.0), SystemRandom())
    assert out["w"].dtype == np.float32


@pytest.mark.parametrize("field", ["clip_norm", "noise_multiplier"])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_parameters_must_be_positive_and_finite(field: str, bad: float) -> None:
    with pytest.raises(ValueError, match=field):
        LocalDp(**{"clip_norm": 1.0, "noise_multiplier": 1.0, field: bad})


# --- the fingerprint ---------------------------------------------------------------------------


def test_with_dp_off_the_fingerprint_is_the_models() -> None:
    assert federation_fingerprint("abc", None) == "abc"


def test_local_dp_changes_the_fingerprint() -> None:
    assert federation_fingerprint("abc", LocalDp(1.0, 1.0)) != "abc"


@pytest.mark.parametrize("other", [LocalDp(2.0, 1.0), LocalDp(1.0, 1.1)])
def test_a_different_c_or_sigma_is_a_different_fingerprint(other: LocalDp) -> None:
    assert federation_fingerprint("abc", other) != federation_fingerprint("abc", LocalDp(1, 1))


def test_settings_off_give_no_mechanism() -> None:
    assert LocalPrivacySettings().local_dp() is None


def test_client_settings_refuse_partial_updates_under_local_dp() -> None:
    with pytest.raises(ValueError, match="partial_updates"):
        ClientSettings.model_validate(
            {
                "insecure": True,
                "privacy": {"mode": "local"},
                "trigger": {"partial_updates": True},
            }
        )


# --- the upload encoder ------------------------------------------------------------------------


def test_the_encoder_sends_the_privatised_delta() -> None:
    compressor = Compressor("raw", 0.05, 0.0, True, LocalDp(5.0, 0.2), ConstantSource(1.0))
    choice = compressor.choose(readonly(6, 8), base_version=0)
    assert (choice.tensors["w"].tolist(), choice.privacy is not None) == ([4.0, 5.0], True)


def test_the_residual_is_added_after_the_noise() -> None:
    # error feedback carries what int8 dropped of the last release: post-processing, not data
    compressor = Compressor("int8", 0.05, 0.0, True, LocalDp(5.0, 0.2), ConstantSource(1.0))
    first = compressor.choose(readonly(6, 8), base_version=0)
    compressor.commit(first, 100, 0.0)
    second = compressor.choose(readonly(6, 8), base_version=1)
    assert first.residual is not None
    assert second.tensors["w"].tolist() == (np.float32([4, 5]) + first.residual["w"]).tolist()


def test_without_local_dp_the_encoder_sends_the_delta() -> None:
    choice = Compressor("raw", 0.05, 0.0, True).choose(readonly(6, 8), base_version=0)
    assert (choice.tensors["w"].tolist(), choice.privacy) == ([6.0, 8.0], None)
