"""Robust rules against hand-computed values, partial updates, attackers among honest clients."""

from __future__ import annotations

import numpy as np
import pytest

from fedllm_server.robust import (
    RULES,
    ClipBound,
    Contribution,
    EmptyRobustAggregationError,
    NonFiniteUpdateError,
    RobustParams,
    prepare,
    robust_aggregate,
    squared_distances,
)
from fedllm_server.robust import base as robust_base


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def contrib(cid: str, weight: float = 1.0, **tensors: np.ndarray) -> Contribution:
    for arr in tensors.values():
        arr.flags.writeable = False  # a rule that wrote the caller's array would raise
    return Contribution(cid, tensors, weight)


def column(*values: float) -> list[Contribution]:
    """One client per value, each sending w = [value]."""
    return [contrib(f"c{i}", w=f32(v)) for i, v in enumerate(values)]


# Two coordinates, five clients: column 0 sorted is a1 b2 c3 d4 e100, column 1 is b-50 c0 e1 d2 a3.
FIVE = [
    ("a", (1, 3)),
    ("b", (2, -50)),
    ("c", (3, 0)),
    ("d", (4, 2)),
    ("e", (100, 1)),
]


def five() -> list[Contribution]:
    return [contrib(cid, w=f32(*vals)) for cid, vals in FIVE]


# --- trimmed mean --------------------------------------------------------------------------------


def test_trimmed_mean_drops_one_value_per_side_per_coordinate() -> None:
    # β = 0.2 of 5: column 0 keeps 2, 3, 4 -> 3; column 1 keeps 0, 1, 2 -> 1
    res = robust_aggregate("trimmed_mean", five(), RobustParams(trim_fraction=0.2))
    np.testing.assert_allclose(res.delta["w"], [3.0, 1.0])


def test_trimmed_mean_reports_each_clients_trimmed_share() -> None:
    # a trimmed in both columns, b and e in one, c and d in none
    res = robust_aggregate("trimmed_mean", five(), RobustParams(trim_fraction=0.2))
    shares = {cid: s["trimmed_share"] for cid, s in res.scores.items()}
    assert shares == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0, "e": 0.5})


def test_trimmed_mean_keeps_a_straddling_value_in_part() -> None:
    # weights 1, 1, 2 on values 0, 1, 10; W = 4, β = 0.25 keeps the weight interval [1, 3]:
    # 0 spans [0, 1] (dropped), 1 spans [1, 2] (kept 1), 10 spans [2, 4] (kept 1) -> 11 / 2
    ups = [contrib("a", 1, w=f32(0)), contrib("b", 1, w=f32(1)), contrib("c", 2, w=f32(10))]
    res = robust_aggregate("trimmed_mean", ups, RobustParams(trim_fraction=0.25))
    np.testing.assert_allclose(res.delta["w"], [5.5])


def test_trimmed_mean_with_no_trimming_is_the_weighted_mean() -> None:
    ups = [contrib("a", 1, w=f32(0)), contrib("b", 3, w=f32(4))]
    res = robust_aggregate("trimmed_mean", ups, RobustParams(trim_fraction=0.0))
    np.testing.assert_allclose(res.delta["w"], [3.0])


# --- median --------------------------------------------------------------------------------------


def test_median_of_an_odd_count_is_the_middle_value() -> None:
    res = robust_aggregate("median", five())
    np.testing.assert_allclose(res.delta["w"], [3.0, 1.0])


def test_median_of_an_even_count_averages_the_two_middle_values() -> None:
    res = robust_aggregate("median", column(1, 2, 3, 100))
    np.testing.assert_allclose(res.delta["w"], [2.5])


def test_weighted_median_follows_the_weight() -> None:
    # weights 1, 1, 3 on 0, 1, 5: cumulative 1, 2, 5 passes W/2 = 2.5 at the value 5
    ups = [contrib("a", 1, w=f32(0)), contrib("b", 1, w=f32(1)), contrib("c", 3, w=f32(5))]
    res = robust_aggregate("median", ups)
    np.testing.assert_allclose(res.delta["w"], [5.0])


def test_median_share_counts_half_for_each_of_two_averaged_values() -> None:
    res = robust_aggregate("median", column(1, 2, 3, 100))
    shares = [res.scores[f"c{i}"]["median_share"] for i in range(4)]
    assert shares == pytest.approx([0.0, 0.5, 0.5, 0.0])


# --- partial updates -----------------------------------------------------------------------------


def partial() -> list[Contribution]:
    # x sent by all three, y only by a and b
    return [
        contrib("a", x=f32(1), y=f32(10)),
        contrib("b", x=f32(2), y=f32(20)),
        contrib("c", x=f32(9)),
    ]


def test_median_takes_each_tensor_over_the_clients_that_sent_it() -> None:
    res = robust_aggregate("median", partial())
    assert {k: float(v[0]) for k, v in res.delta.items()} == {"x": 2.0, "y": 15.0}


def test_tensor_clients_counts_senders_per_tensor() -> None:
    res = robust_aggregate("median", partial())
    assert res.tensor_clients == {"x": 3, "y": 2}


def test_partial_mean_normalises_each_tensor_over_its_senders() -> None:
    res = robust_aggregate("mean", partial())
    assert {k: float(v[0]) for k, v in res.delta.items()} == pytest.approx({"x": 4.0, "y": 15.0})


def test_distances_count_a_missing_tensor_as_zero() -> None:
    # a = (x=[1, 0], y=[0]) ; b = (x=[0, 0], y=[2]) -> 1 + 4 ; b' without y -> 1
    a = contrib("a", x=f32(1, 0), y=f32(0))
    full = prepare([a, contrib("b", x=f32(0, 0), y=f32(2))])[0]
    part = prepare([a, contrib("b", x=f32(0, 0))])[0]
    assert (squared_distances(full)[0, 1], squared_distances(part)[0, 1]) == (5.0, 1.0)


# --- Krum ----------------------------------------------------------------------------------------

# n = 5, f = 1: each score sums the 2 nearest squared distances.
# 0: 1+4 = 5, 1: 1+1 = 2, 2: 1+1 = 2, 3: 1+4 = 5, 20: 289+324 = 613
KRUM_POINTS = (0, 1, 2, 3, 20)


def test_krum_scores_sum_the_nearest_squared_distances() -> None:
    res = robust_aggregate("krum", column(*KRUM_POINTS), RobustParams(byzantine=1))
    scores = [res.scores[f"c{i}"]["krum_score"] for i in range(5)]
    assert scores == pytest.approx([5, 2, 2, 5, 613])


def test_krum_selects_the_best_score_earliest_on_a_tie() -> None:
    res = robust_aggregate("krum", column(*KRUM_POINTS), RobustParams(byzantine=1))
    assert (res.selected, float(res.delta["w"][0])) == (("c1",), 1.0)


def test_multi_krum_averages_n_minus_f_and_leaves_the_outlier_out() -> None:
    res = robust_aggregate("multi_krum", column(*KRUM_POINTS), RobustParams(byzantine=1))
    assert (float(res.delta["w"][0]), res.rejected) == (1.5, {"c4": "not_selected"})


def test_multi_krum_selection_ignores_an_inflated_weight() -> None:
    ups = [*column(*KRUM_POINTS[:4]), contrib("big", 1e9, w=f32(20))]
    res = robust_aggregate("multi_krum", ups, RobustParams(byzantine=1, selected=2))
    assert res.selected == ("c1", "c2")


def test_krum_refuses_too_few_updates_for_f() -> None:
    with pytest.raises(ValueError, match="2f \\+ 3"):
        robust_aggregate("krum", column(0, 1, 2, 3), RobustParams(byzantine=1))


def test_multi_krum_refuses_more_than_n_minus_f() -> None:
    with pytest.raises(ValueError, match="n - f"):
        robust_aggregate("multi_krum", column(*KRUM_POINTS), RobustParams(byzantine=1, selected=5))


# --- clipping ------------------------------------------------------------------------------------


def test_clipping_scales_an_update_to_the_bound() -> None:
    # ‖[6, 8]‖ = 10 -> scale 0.5 ; ‖[3, 4]‖ = 5 stays
    ups = [contrib("a", w=f32(3, 4)), contrib("b", w=f32(6, 8))]
    res = robust_aggregate("mean", ups, clip_bound=ClipBound(norm=5.0))
    assert [res.scores[c]["scale"] for c in "ab"] == [1.0, 0.5]


def test_clipping_measures_the_norm_over_all_tensors() -> None:
    # ‖(x=[3], y=[4])‖ = 5 > 2.5 -> scale 0.5
    res = robust_aggregate(
        "mean", [contrib("a", x=f32(3), y=f32(4))], clip_bound=ClipBound(norm=2.5)
    )
    np.testing.assert_allclose([res.delta["x"][0], res.delta["y"][0]], [1.5, 2.0])


def test_derived_bound_is_the_multiplier_times_the_median_norm() -> None:
    # norms 1, 2, 10 -> C = 1.5·2 = 3 ; clipped 1, 2, 3 -> mean 2
    res = robust_aggregate("mean", column(1, 2, 10), clip_bound=ClipBound(multiplier=1.5))
    assert (res.extra["clip_bound"], float(res.delta["w"][0])) == (3.0, 2.0)


def test_clipping_composes_with_the_median() -> None:
    # C = 2 (median of the norms 1, 2, 10): clipped values 1, 2, −2 -> median 1
    res = robust_aggregate("median", column(1, 2, -10), clip_bound=ClipBound(multiplier=1.0))
    assert float(res.delta["w"][0]) == pytest.approx(1.0)


def test_clip_bound_needs_exactly_one_of_its_forms() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ClipBound(norm=1.0, multiplier=2.0)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_refused_by_name(bad: float) -> None:
    ups = [*column(1, 2), contrib("evil", w=f32(0.0), v=f32(1.0, bad))]
    with pytest.raises(NonFiniteUpdateError, match=r"'evil'.*'v'"):
        robust_aggregate("median", ups)


def test_a_huge_but_finite_update_has_a_finite_norm() -> None:
    res = robust_aggregate("mean", [contrib("a", w=f32(3e30, 4e30))])
    assert res.scores["a"]["norm"] == pytest.approx(5e30, rel=1e-6)


def test_zero_weight_client_is_left_out_and_recorded() -> None:
    ups = [contrib("a", 1, w=f32(1)), contrib("z", 0, w=f32(100))]
    res = robust_aggregate("mean", ups)
    assert (float(res.delta["w"][0]), res.rejected) == (1.0, {"z": "zero_weight"})


def test_no_positive_weight_is_an_empty_aggregation() -> None:
    with pytest.raises(EmptyRobustAggregationError):
        robust_aggregate("mean", [contrib("z", 0, w=f32(1))])


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        robust_aggregate("mean", [contrib("a", w=f32(1)), contrib("b", w=f32(1, 2))])


def test_same_client_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        robust_aggregate("mean", [contrib("a", w=f32(1)), contrib("a", w=f32(2))])


def test_unknown_rule_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="trimmed_mean"):
        robust_aggregate("bulyan", column(1))


def test_record_serialises_without_the_delta() -> None:
    record = robust_aggregate("krum", column(*KRUM_POINTS)).to_dict()
    assert set(record) == {"rule", "selected", "rejected", "scores", "tensor_clients", "extra"}


# --- blocks --------------------------------------------------------------------------------------


def test_small_blocks_give_the_textbook_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # 7 clients x 1,000 coordinates read 3 coordinates per block: same as numpy over the stack
    monkeypatch.setattr(robust_base, "STACK_ELEMENTS", 21)
    rng = np.random.default_rng(7)
    stack = rng.normal(size=(7, 10, 100)).astype(np.float32)
    ups = [contrib(f"c{i}", w=stack[i].copy()) for i in range(7)]
    trimmed = robust_aggregate("trimmed_mean", ups, RobustParams(trim_fraction=2 / 7)).delta["w"]
    med = robust_aggregate("median", ups).delta["w"]
    expect_trim = np.sort(stack.astype(np.float64), axis=0)[2:5].mean(axis=0)
    np.testing.assert_allclose(trimmed, expect_trim, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(med, np.median(stack, axis=0), rtol=1e-6)


# --- attackers among honest clients --------------------------------------------------------------

DIM = 64


def honest_and_attackers(attack: str) -> tuple[list[Contribution], np.ndarray]:
    """8 honest clients near g, 2 attackers: sign flip (−10·g) or scaling (+100·g)."""
    rng = np.random.default_rng(0)
    g = np.full(DIM, 0.1, dtype=np.float32)
    ups = [contrib(f"h{i}", w=(g + rng.normal(0, 0.01, DIM)).astype(np.float32)) for i in range(8)]
    factor = -10.0 if attack == "signflip" else 100.0
    ups += [contrib(f"m{i}", w=(factor * g).astype(np.float32)) for i in range(2)]
    return ups, g


DEFENCES = [
    ("trimmed_mean", RobustParams(trim_fraction=0.2)),
    ("median", RobustParams()),
    ("krum", RobustParams(byzantine=2)),
    ("multi_krum", RobustParams(byzantine=2)),
]


def relative_error(delta: np.ndarray, g: np.ndarray) -> float:
    return float(np.linalg.norm(delta - g) / np.linalg.norm(g))


@pytest.mark.parametrize("attack", ["signflip", "scale"])
def test_plain_mean_is_dragged_far_from_the_honest_update(attack: str) -> None:
    ups, g = honest_and_attackers(attack)
    # sign flip: (8·g − 20·g)/10 = −1.2·g (error 2.2); scaling: (8·g + 200·g)/10 (error 19.8)
    assert relative_error(robust_aggregate("mean", ups).delta["w"], g) > 1.5


@pytest.mark.parametrize("attack", ["signflip", "scale"])
@pytest.mark.parametrize(("rule", "params"), DEFENCES)
def test_robust_rule_stays_near_the_honest_update(
    attack: str, rule: str, params: RobustParams
) -> None:
    ups, g = honest_and_attackers(attack)
    assert relative_error(robust_aggregate(rule, ups, params).delta["w"], g) < 0.2


@pytest.mark.parametrize("attack", ["signflip", "scale"])
def test_median_norm_clipping_bounds_the_attackers_pull(attack: str) -> None:
    # clipped to ‖g‖: the attackers move the mean by at most 2/10·2‖g‖
    ups, g = honest_and_attackers(attack)
    res = robust_aggregate("mean", ups, clip_bound=ClipBound(multiplier=1.0))
    assert relative_error(res.delta["w"], g) < 0.45


def test_every_registered_rule_aggregates_the_honest_case() -> None:
    ups, g = honest_and_attackers("scale")
    honest = ups[:8]
    errors = {rule: relative_error(robust_aggregate(rule, honest).delta["w"], g) for rule in RULES}
    assert max(errors.values()) < 0.2
