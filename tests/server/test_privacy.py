"""DP-FedAvg pieces: clipping and noising against hand-computed values, noise statistics, the
accountant against the closed form for Gaussian composition and against its second method."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedllm_core.privacy import ConstantSource
from fedllm_server.privacy import (
    AccountantConfig,
    GaussianEvents,
    PrivacyAccountant,
    PrivacyBudgetExceededError,
    SeededSource,
    SystemRandom,
    central_noised_mean,
    clip_delta,
    compose,
    epsilon,
    noise_multiplier_for,
    poisson_sample,
)
from fedllm_server.robust import Contribution, NonFiniteUpdateError


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def readonly(**tensors: np.ndarray) -> dict[str, np.ndarray]:
    for arr in tensors.values():
        arr.flags.writeable = False
    return tensors


# --- clipping and the central mean -------------------------------------------------------------


def test_clip_delta_scales_to_the_bound() -> None:
    # ‖[6, 8]‖ = 10, C = 5 -> scale 0.5 -> [3, 4]
    clipped, n, scale = clip_delta(readonly(w=f32(6, 8)), 5.0)
    assert (clipped["w"].tolist(), n, scale) == ([3.0, 4.0], 10.0, 0.5)


def test_clip_delta_leaves_an_update_inside_the_ball() -> None:
    clipped, _, scale = clip_delta(readonly(w=f32(3, 4)), 5.0)
    assert (clipped["w"].tolist(), scale) == ([3.0, 4.0], 1.0)


SHAPES = {"w": (2,), "h": (1,)}


def two_clients() -> list[Contribution]:
    # a: ‖[3, 4]‖ = 5 stays; b: ‖[0, 20]‖ = 20 clipped to C = 10 -> [0, 10]; neither sends h
    return [Contribution("a", readonly(w=f32(3, 4))), Contribution("b", readonly(w=f32(0, 20)))]


def test_central_mean_divides_the_clipped_sum_by_the_expected_weight() -> None:
    # ([3, 4] + [0, 10]) / 4 = [0.75, 3.5]
    out, _ = central_noised_mean(two_clients(), SHAPES, 10.0, 1.0, 4.0, ConstantSource(0.0))
    np.testing.assert_allclose(out["w"], [0.75, 3.5])


def test_central_noise_has_std_sigma_c_over_expected_weight() -> None:
    # every normal = 1: each coordinate moves by σ·C/W_exp = 0.5·10/4 = 1.25, h included
    out, report = central_noised_mean(two_clients(), SHAPES, 10.0, 0.5, 4.0, ConstantSource(1.0))
    np.testing.assert_allclose(out["w"], [2.0, 4.75])
    assert (float(out["h"][0]), report.noise_std) == (1.25, 1.25)


def test_central_report_records_norms_and_scales() -> None:
    _, report = central_noised_mean(two_clients(), SHAPES, 10.0, 1.0, 4.0, ConstantSource(0.0))
    assert (report.norms, report.scales) == ({"a": 5.0, "b": 20.0}, {"a": 1.0, "b": 0.5})


def test_central_weights_above_one_are_refused() -> None:
    ups = [Contribution("a", readonly(w=f32(1, 0)), weight=2.0)]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        central_noised_mean(ups, SHAPES, 1.0, 1.0, 1.0, ConstantSource(0.0))


def test_central_refuses_a_tensor_outside_the_model() -> None:
    ups = [Contribution("a", readonly(x=f32(1)))]
    with pytest.raises(ValueError, match="layout"):
        central_noised_mean(ups, SHAPES, 1.0, 1.0, 1.0, ConstantSource(0.0))


def test_central_refuses_a_non_finite_update() -> None:
    ups = [Contribution("a", readonly(w=f32(1, math.nan)))]
    with pytest.raises(NonFiniteUpdateError):
        central_noised_mean(ups, SHAPES, 1.0, 1.0, 1.0, ConstantSource(0.0))


# --- noise statistics (CSPRNG) -----------------------------------------------------------------

N_NOISE = 200_000  # standard errors: mean 0.0022·std, std 0.0016·std


def test_central_noise_from_the_csprng_has_mean_zero_and_the_stated_std() -> None:
    # no contributions: the output is the noise alone, std = 1.5·2/5 = 0.6
    out, report = central_noised_mean([], {"w": (N_NOISE,)}, 2.0, 1.5, 5.0, SystemRandom())
    noise = out["w"].astype(np.float64)
    assert abs(noise.mean()) < 0.02 * report.noise_std  # 9 standard errors
    assert abs(noise.std() / report.noise_std - 1) < 0.02  # 12 standard errors


def test_csprng_normals_have_gaussian_tails() -> None:
    # P(|z| > 3) = 0.0027: 540 expected of 200,000, standard deviation 23
    z = SystemRandom().standard_normal(N_NOISE)
    assert 400 < int(np.sum(np.abs(z) > 3)) < 700


def test_csprng_uniforms_lie_in_the_unit_interval() -> None:
    u = SystemRandom().uniform(N_NOISE)
    assert (u.min() >= 0, u.max() < 1, abs(u.mean() - 0.5) < 0.01) == (True, True, True)


def test_poisson_sample_includes_each_client_with_probability_q() -> None:
    # 10,000 clients, q = 0.3: 3,000 expected, standard deviation 46
    ids = [f"c{i}" for i in range(10_000)]
    assert 2_700 < len(poisson_sample(ids, 0.3, SeededSource(1))) < 3_300


def test_poisson_sample_with_q_one_takes_everyone() -> None:
    assert poisson_sample(["a", "b"], 1.0, SystemRandom()) == ("a", "b")


# --- accountant: against the closed form and the second method ----------------------------------


def gaussian_composition_epsilon(sigma: float, count: int, delta: float) -> float:
    """Balle & Wang 2018: T Gaussian mechanisms = one with μ = √T/σ;
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2), solved for ε."""
    mu = math.sqrt(count) / sigma

    def gap(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return float(brentq(gap, 0.0, 500.0))


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_pld_matches_the_closed_form_for_full_participation(sigma: float) -> None:
    eps = epsilon(compose((), sigma, 1.0, 30), 1e-6, "pld")
    assert eps == pytest.approx(gaussian_composition_epsilon(sigma, 30, 1e-6), rel=1e-3)


@pytest.mark.parametrize(("sigma", "q"), [(1.0, 0.6), (2.0, 0.6), (2.0, 1.0), (4.0, 0.8)])
def test_rdp_bounds_pld_from_above_and_close_to_it(sigma: float, q: float) -> None:
    ledger = compose((), sigma, q, 30)
    pld, rdp = epsilon(ledger, 1e-6, "pld"), epsilon(ledger, 1e-6, "rdp")
    assert pld <= rdp <= 1.15 * pld


def test_subsampling_spends_less_than_full_participation() -> None:
    assert epsilon(compose((), 2.0, 0.6, 30), 1e-6) < epsilon(compose((), 2.0, 1.0, 30), 1e-6)


def test_more_noise_spends_less() -> None:
    assert epsilon(compose((), 4.0, 1.0, 30), 1e-6) < epsilon(compose((), 2.0, 1.0, 30), 1e-6)


def test_compose_merges_equal_events() -> None:
    ledger = compose(compose((), 1.0, 0.5), 1.0, 0.5, 2)
    assert ledger == (GaussianEvents(1.0, 0.5, 3),)


def test_events_refuse_a_sampling_probability_outside_zero_one() -> None:
    with pytest.raises(ValueError, match="sampling probability"):
        GaussianEvents(1.0, 1.5)


def test_noise_multiplier_for_is_the_tight_sigma() -> None:
    sigma = noise_multiplier_for(8.0, 1e-6, 30, 1.0)
    eps_at, eps_below = (epsilon(compose((), s, 1.0, 30), 1e-6) for s in (sigma, 0.99 * sigma))
    assert eps_at <= 8.0 < eps_below


# --- accountant: clients, federation, budget, checkpoint ----------------------------------------


def federation(aggregations: int = 10) -> PrivacyAccountant:
    """a eligible for every aggregation with q = 1, b with q = 0.6, c only for the last 3."""
    acc = PrivacyAccountant()
    for t in range(aggregations):
        eligible = {"a": 1.0, "b": 0.6} | ({"c": 1.0} if t >= aggregations - 3 else {})
        acc = acc.record_aggregation(2.0, eligible)
    return acc


def test_epsilon_grows_with_every_aggregation() -> None:
    spent = [federation(t).epsilon("a") for t in (1, 2, 5, 10)]
    assert spent == sorted(spent) and len(set(spent)) == 4


def test_each_client_spends_only_what_it_was_eligible_for() -> None:
    acc = federation()
    assert acc.epsilon("c") < acc.epsilon("b") < acc.epsilon("a")


def test_federation_epsilon_bounds_every_client() -> None:
    acc = federation()
    assert acc.federation_epsilon() == pytest.approx(acc.epsilon("a"))


def test_a_client_never_eligible_has_spent_nothing() -> None:
    assert federation().epsilon("stranger") == 0.0


def test_local_uploads_count_for_their_client_and_the_federation() -> None:
    # σ = 0.5 once spends more than a's ten σ = 2 aggregations, so c becomes the worst client
    acc = federation().record_local_upload("c", 0.5)
    assert (acc.epsilon("c") > acc.epsilon("a"), acc.federation_epsilon()) == (
        True,
        pytest.approx(acc.epsilon("c")),
    )


def test_the_event_that_would_pass_the_budget_is_refused() -> None:
    # σ = 4 at δ = 1e-6: 30 aggregations spend 7.0, so the budget 8 runs out within 60
    acc = PrivacyAccountant(AccountantConfig(epsilon_budget=8.0))
    with pytest.raises(PrivacyBudgetExceededError) as info:
        for _ in range(60):
            acc = acc.record_aggregation(4.0, {"a": 1.0})
    assert acc.federation_epsilon() <= 8.0 < info.value.would_be


def test_a_refused_event_leaves_the_accountant_as_it_was() -> None:
    acc = PrivacyAccountant(AccountantConfig(epsilon_budget=1.0))
    with pytest.raises(PrivacyBudgetExceededError, match="nothing recorded"):
        acc.record_aggregation(0.5, {"a": 1.0})
    assert (acc.aggregations, acc.epsilon("a")) == (0, 0.0)


def test_checkpoint_round_trip_through_json() -> None:
    acc = federation().record_local_upload("c", 3.0)
    back = PrivacyAccountant.from_dict(json.loads(json.dumps(acc.to_dict())), acc.config)
    assert back == acc


def test_restored_ledgers_give_the_same_epsilon_at_a_new_delta() -> None:
    acc = federation()
    config = AccountantConfig(target_delta=1e-5)
    back = PrivacyAccountant.from_dict(acc.to_dict(), config)
    assert back.epsilon("b") == epsilon(acc.ledger("b"), 1e-5)


def test_report_lists_every_client_and_the_federation() -> None:
    report = federation().report()
    assert (sorted(report["clients"]), report["aggregations"]) == (["a", "b", "c"], 10)
