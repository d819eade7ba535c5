"""The `[robust]` rules through the three strategy objects, against hand-computed values.

Every aggregation runs `strategies.base.aggregate`, the engine's own fold-then-finish calls.
Five clients, two coordinates (docs/robust.md's example): column 0 is 1 2 3 4 100, column 1
is 3 -50 0 2 1, on a global model of [10, 10].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.settings import ServerSettings
from fedllm_server.strategies import (
    EmptyAggregationError,
    FedAvgSettings,
    FedOptSettings,
    GsfsServerSettings,
    StrategyResult,
    WeightedSum,
    aggregate,
)
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.strategies.fedopt import FedOpt, FedOptState
from fedllm_server.strategies.gsfs import Gsfs
from fedllm_server.strategies.registry import make_strategy
from fedllm_server.strategies.settings import RobustSettings
from fedllm_server.tensors import l2_norm

FIVE = {"a": (1, 3), "b": (2, -50), "c": (3, 0), "d": (4, 2), "e": (100, 1)}
GLOB = {"w": np.array([10, 10], np.float32)}


def f32(*values: float) -> np.ndarray:
    arr = np.array(values, dtype=np.float32)
    arr.flags.writeable = False  # a rule that wrote a client's array would raise
    return arr


def upd(cid: str, n: int = 1, **tensors: np.ndarray) -> AcceptedUpdate:
    return AcceptedUpdate(cid, f"{cid}-u", 0, 0, n, "round", 0.0, {}, tensors, l2_norm(tensors))


def five(**sample_counts: int) -> list[AcceptedUpdate]:
    return [upd(cid, sample_counts.get(cid, 1), w=f32(*v)) for cid, v in FIVE.items()]


def fedavg(ups: list[AcceptedUpdate], **robust: Any) -> StrategyResult[None]:
    return aggregate(FedAvg(FedAvgSettings(), RobustSettings(**robust)), GLOB, ups, None, 1)


def w_of(result: StrategyResult[Any]) -> list[float]:
    return [float(x) for x in result.global_tensors["w"]]


# --- FedAvg -----------------------------------------------------------------------------------


def test_rule_none_is_the_plain_mean() -> None:
    # (1+2+3+4+100)/5 = 22, (3−50+0+2+1)/5 = −8.8
    assert w_of(fedavg(five())) == pytest.approx([32.0, 1.2])


def test_trimmed_mean_through_fedavg() -> None:
    # β = 0.2 of 5 drops one value per side: mean(2, 3, 4) = 3, mean(0, 1, 2) = 1
    assert w_of(fedavg(five(), rule="trimmed_mean")) == pytest.approx([13.0, 11.0])


def test_median_through_fedavg() -> None:
    assert w_of(fedavg(five(), rule="median")) == pytest.approx([13.0, 11.0])


def test_median_weighs_by_sample_count_when_asked() -> None:
    # n = 1, 1, 1, 1, 4: W = 8, W/2 = 4 falls between 4 and e's 100 -> (4 + 100)/2 = 52;
    # column 1 sorted b −50, c 0, e 1 (weight 4), d 2, a 3: W/2 = 4 lies inside e's weight -> 1
    result = fedavg(five(e=4), rule="median", weights="strategy")
    assert w_of(result) == pytest.approx([62.0, 11.0])


def test_the_median_ignores_sample_counts_by_default() -> None:
    # uniform weights: e's n = 4 buys nothing, the plain median (3, 1)
    assert w_of(fedavg(five(e=4), rule="median")) == pytest.approx([13.0, 11.0])


def test_a_client_with_most_samples_cannot_set_the_default_median() -> None:
    # e holds 100 of 104 samples; its 100 would be the weighted median of column 0
    assert w_of(fedavg(five(e=100), rule="median"))[0] == pytest.approx(13.0)


def test_krum_selects_the_update_closest_to_its_neighbours() -> None:
    # f = 1, 2 nearest: scores a 10+13 = 23, b 2501+2708, c 5+13 = 18, d 5+10 = 15, e 9217+9410
    assert w_of(fedavg(five(), rule="krum")) == pytest.approx([14.0, 12.0])


def test_krum_records_its_scores() -> None:
    scores = fedavg(five(), rule="krum").metrics.robust["scores"]
    assert {c: s["krum_score"] for c, s in scores.items()} == pytest.approx(
        {"a": 23, "b": 5209, "c": 18, "d": 15, "e": 18627}
    )


def test_krum_leaves_the_others_out_of_the_record() -> None:
    metrics = fedavg(five(), rule="krum").metrics
    assert (metrics.robust["selected"], metrics.excluded) == (
        ["d"],
        {c: "not_selected" for c in "abce"},
    )


def test_multi_krum_averages_the_n_minus_f_best() -> None:
    # d, c, a, b: (4+3+1+2)/4 = 2.5, (2+0+3−50)/4 = −11.25
    assert w_of(fedavg(five(), rule="multi_krum")) == pytest.approx([12.5, -1.25])


def test_multi_krum_selected_three() -> None:
    # d, c, a: 8/3, 5/3
    result = fedavg(five(), rule="multi_krum", selected=3)
    assert w_of(result) == pytest.approx([10 + 8 / 3, 10 + 5 / 3])


def test_krum_with_too_few_updates_refuses_the_aggregation() -> None:
    with pytest.raises(EmptyAggregationError, match="2f"):
        fedavg(five()[:4], rule="krum")  # n = 4 < 2f + 3 = 5


def test_a_non_finite_update_is_left_out_by_name() -> None:
    ups = [*five()[:4], upd("nan", w=f32(math.nan, 0))]
    result = fedavg(ups, rule="median")  # a b c d: median(1, 2, 3, 4), median(3, −50, 0, 2)
    assert (w_of(result), result.metrics.excluded) == (
        pytest.approx([12.5, 11.0]),
        {"nan": "non_finite"},
    )


# --- clipping ---------------------------------------------------------------------------------


def two_to_clip() -> list[AcceptedUpdate]:
    return [upd("a", w=f32(3, 4)), upd("b", w=f32(0.6, 0))]  # norms 5 and 0.6


def test_clip_norm_scales_an_update_outside_the_ball() -> None:
    # C = 1: a -> (0.6, 0.8), b unchanged: mean (0.6, 0.4)
    result = fedavg(two_to_clip(), rule="clip", clip_norm=1.0)
    assert w_of(result) == pytest.approx([10.6, 10.4])


def test_clip_norm_streams_instead_of_keeping_updates() -> None:
    strategy = FedAvg(FedAvgSettings(), RobustSettings(rule="clip", clip_norm=1.0))
    acc = WeightedSum()
    for update in two_to_clip():
        strategy.fold(acc, update, at=None)  # type: ignore[arg-type]  # FedAvg reads no Weighing
    assert acc.kept == []


def test_clip_norm_record_counts_the_clipped() -> None:
    record = fedavg(two_to_clip(), rule="clip", clip_norm=1.0).metrics.robust
    assert (record["rule"], record["extra"]) == ("clip", {"clip_bound": 1.0, "clipped": 1.0})


def test_clip_multiplier_clips_to_the_median_norm() -> None:
    # norms 1, 2, 10 -> C = 2: c -> (2, 0); mean (1 + 0 + 2)/3 = 1, (0 + 2 + 0)/3 = 2/3
    ups = [upd("a", w=f32(1, 0)), upd("b", w=f32(0, 2)), upd("c", w=f32(10, 0))]
    result = fedavg(ups, rule="clip", clip_multiplier=1.0)
    assert w_of(result) == pytest.approx([11.0, 10 + 2 / 3])


def test_clipping_composes_with_a_rule() -> None:
    # C = 1 first: each update of FIVE is scaled to norm 1 or less, then the median per column
    result = fedavg(five(), rule="median", clip_norm=1.0)
    scaled = {c: np.array(v) / max(1.0, float(np.hypot(*v))) for c, v in FIVE.items()}
    expected = np.median(np.stack(list(scaled.values())), axis=0) + 10
    assert w_of(result) == pytest.approx(expected.tolist(), rel=1e-6)


def test_rule_none_keeps_no_update() -> None:
    acc = WeightedSum()
    FedAvg(FedAvgSettings()).fold(acc, five()[0], at=None)  # type: ignore[arg-type]
    assert acc.kept == []


# --- FedOpt and GSFS --------------------------------------------------------------------------


def test_fedopt_takes_the_median_as_its_pseudo_gradient() -> None:
    # Δ = (3, 1); adam from zero: m = 0.1·Δ, u = 0.01·Δ², step = η·m/(√u + τ) = 0.01·Δ/(Δ + 1e-3)
    strategy = FedOpt(FedOptSettings(), RobustSettings(rule="median"))
    result = aggregate(strategy, GLOB, five(), FedOptState(), 1)
    expected = [10 + 0.01 * 0.3 / (0.3 + 1e-3), 10 + 0.01 * 0.1 / (0.1 + 1e-3)]
    assert w_of(result) == pytest.approx(expected, rel=1e-5)


def gsfs(ups: list[AcceptedUpdate], **robust: Any) -> StrategyResult[None]:
    strategy = Gsfs(GsfsServerSettings(server_lr=0.5), RobustSettings(**robust))
    return aggregate(strategy, GLOB, ups, None, 1)


def test_gsfs_scales_the_trimmed_mean_by_its_server_lr() -> None:
    # 10 + 0.5·3, 10 + 0.5·1
    assert w_of(gsfs(five(), rule="trimmed_mean")) == pytest.approx([11.5, 10.5])


def test_gsfs_weighs_the_rule_by_frequency() -> None:
    # f = 1, 1, 1, 1, 4 by client (e uploaded 4 times): the weighted median of column 0 is 52
    strategy = Gsfs(GsfsServerSettings(), RobustSettings(rule="median", weights="strategy"))
    freqs = {"a": 1, "b": 1, "c": 1, "d": 1, "e": 4}
    result = aggregate(strategy, GLOB, five(), None, 1, freqs)
    assert w_of(result)[0] == pytest.approx(62.0)


def test_gsfs_partial_updates_take_the_median_over_their_senders() -> None:
    glob = {"w": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)}
    ups = [upd("a", w=f32(1), b=f32(5)), upd("b", w=f32(2)), upd("c", w=f32(9), b=f32(7))]
    strategy = Gsfs(GsfsServerSettings(), RobustSettings(rule="median"))
    result = aggregate(strategy, glob, ups, None, 1)
    got = {k: float(v[0]) for k, v in result.global_tensors.items()}
    assert got == {"w": 2.0, "b": 6.0}  # median(1, 2, 9); median(5, 7) over a and c


def test_the_record_names_the_rule() -> None:
    assert gsfs(five(), rule="multi_krum").metrics.to_dict()["robust"]["rule"] == "multi_krum"


def test_rule_none_has_an_empty_record() -> None:
    assert gsfs(five()).metrics.to_dict()["robust"] == {}


# --- settings ---------------------------------------------------------------------------------


def test_the_default_rule_is_none() -> None:
    assert ServerSettings.model_validate({"insecure": True}).robust.rule == "none"


def test_clip_needs_a_bound() -> None:
    with pytest.raises(ValidationError, match="clip_norm or clip_multiplier"):
        RobustSettings(rule="clip")


def test_only_one_clip_bound() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        RobustSettings(rule="median", clip_norm=1.0, clip_multiplier=1.0)


def test_rule_none_takes_no_clip_bound() -> None:
    with pytest.raises(ValidationError, match="other than 'none'"):
        RobustSettings(clip_norm=1.0)


def test_the_registry_builds_the_strategy_with_its_rule() -> None:
    strategy = make_strategy(FedAvgSettings(), RobustSettings(rule="median"))
    assert w_of(aggregate(strategy, GLOB, five(), None, 1)) == pytest.approx([13.0, 11.0])
