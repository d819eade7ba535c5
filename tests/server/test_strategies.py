"""FedAvg, FedOpt and GSFS against hand-computed values (numbers written out).

Every aggregation here runs `strategies.base.aggregate`: the same fold-then-finish calls the
engine makes, through the `Strategy` objects the registry builds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import TypeAdapter, ValidationError

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.strategies import (
    EmptyAggregationError,
    FedAvgSettings,
    FedOptSettings,
    GsfsServerSettings,
    StrategyResult,
    ValidationSettings,
    Weighing,
    WeightedSum,
    aggregate,
)
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.strategies.fedopt import FedOpt, FedOptState
from fedllm_server.strategies.gsfs import Gsfs
from fedllm_server.strategies.registry import StrategySettings, make_strategy
from fedllm_server.tensors import TensorDict, l2_norm


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def upd(cid: str, n: int = 1, base: int = 0, **tensors: np.ndarray) -> AcceptedUpdate:
    return AcceptedUpdate(
        cid, f"{cid}-u", base, -1, n, "performance", 0.0, {}, tensors, l2_norm(tensors)
    )


def run_fedavg(
    glob: TensorDict, ups: list[AcceptedUpdate], s: FedAvgSettings, new_version: int
) -> StrategyResult[None]:
    return aggregate(FedAvg(s), glob, ups, None, new_version)


def run_fedopt(
    glob: TensorDict,
    ups: list[AcceptedUpdate],
    state: FedOptState,
    s: FedOptSettings,
    new_version: int,
) -> StrategyResult[FedOptState]:
    return aggregate(FedOpt(s), glob, ups, state, new_version)


def run_gsfs(
    glob: TensorDict,
    ups: list[AcceptedUpdate],
    version: int,
    s: GsfsServerSettings,
    freqs: dict[str, int] | None = None,
) -> StrategyResult[None]:
    """GSFS from version `version`, f_i by client (FREQS unless given)."""
    return aggregate(Gsfs(s), glob, ups, None, version + 1, FREQS if freqs is None else freqs)


# --- FedAvg -----------------------------------------------------------------------------------


def test_fedavg_weights_by_sample_count() -> None:
    # n = 1 and 3 -> weights 0.25, 0.75: w = [1, 2] + 0.25·[1, 0] + 0.75·[0, 4] = [1.25, 5.0]
    glob = {"w": f32(1, 2)}
    ups = [upd("a", n=1, w=f32(1, 0)), upd("b", n=3, w=f32(0, 4))]
    res = run_fedavg(glob, ups, FedAvgSettings(), new_version=1)
    np.testing.assert_allclose(res.global_tensors["w"], [1.25, 5.0], rtol=1e-6)


def test_fedavg_reports_normalised_weights() -> None:
    ups = [upd("a", n=1, w=f32(1, 0)), upd("b", n=3, w=f32(0, 4))]
    res = run_fedavg({"w": f32(1, 2)}, ups, FedAvgSettings(), new_version=1)
    assert res.metrics.weights == pytest.approx({"a": 0.25, "b": 0.75})


def test_fedavg_uniform_weighting_when_sample_weighting_off() -> None:
    # 0.5·[1, 0] + 0.5·[0, 4] = [0.5, 2] -> [1.5, 4]
    ups = [upd("a", n=1, w=f32(1, 0)), upd("b", n=3, w=f32(0, 4))]
    res = run_fedavg({"w": f32(1, 2)}, ups, FedAvgSettings(sample_weighting=False), 1)
    np.testing.assert_allclose(res.global_tensors["w"], [1.5, 4.0], rtol=1e-6)


def test_fedavg_metrics_norms() -> None:
    # ‖[3, 4]‖ = 5 ; single client so the step is the delta itself
    res = run_fedavg({"w": f32(0, 0)}, [upd("a", w=f32(3, 4))], FedAvgSettings(), 1)
    assert (res.metrics.update_norms["a"], res.metrics.step_norm) == pytest.approx((5.0, 5.0))


def test_fedavg_leaves_inputs_untouched() -> None:
    glob, delta = {"w": f32(1, 2)}, f32(1, 1)
    run_fedavg(glob, [upd("a", w=delta), upd("b", w=delta)], FedAvgSettings(), 1)
    assert glob["w"].tolist() == [1, 2] and delta.tolist() == [1, 1]


def test_fedavg_refuses_empty_round() -> None:
    with pytest.raises(EmptyAggregationError):
        run_fedavg({"w": f32(1)}, [], FedAvgSettings(), 1)


def test_same_client_twice_in_one_aggregation_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        run_fedavg({"w": f32(1)}, [upd("a", w=f32(1)), upd("a", w=f32(1))],
                         FedAvgSettings(), 1)  # fmt: skip


finite = st.floats(-1e3, 1e3, width=32)


@settings(max_examples=40, deadline=None)
@given(
    delta=hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=5), elements=finite),
    counts=st.lists(st.integers(1, 1000), min_size=1, max_size=6),
)
def test_fedavg_of_identical_deltas_is_that_delta(delta: np.ndarray, counts: list[int]) -> None:
    glob = {"t": np.zeros_like(delta)}
    ups = [upd(f"c{i}", n=n, t=delta) for i, n in enumerate(counts)]
    res = run_fedavg(glob, ups, FedAvgSettings(), 1)
    np.testing.assert_allclose(res.global_tensors["t"], delta, rtol=1e-5, atol=1e-3)


# --- FedOpt -----------------------------------------------------------------------------------


def test_fedadam_first_step_matches_formula() -> None:
    # Δ = [0.1, −0.2]; m = 0.1·Δ = [0.01, −0.02]; u = 0.01·Δ² = [1e-4, 4e-4]
    # step = 0.01·m/(√u + 1e-3) = [0.01·0.01/0.011, 0.01·(−0.02)/0.021]
    res = run_fedopt(
        {"w": f32(0.0, 1.0)}, [upd("a", w=f32(0.1, -0.2))], FedOptState(), FedOptSettings(), 1
    )
    np.testing.assert_allclose(res.global_tensors["w"], [0.0090909091, 0.9904761905], rtol=1e-5)


def test_fedadam_state_carries_moments() -> None:
    res = run_fedopt(
        {"w": f32(0.0, 1.0)}, [upd("a", w=f32(0.1, -0.2))], FedOptState(), FedOptSettings(), 1
    )
    np.testing.assert_allclose(res.state.m["w"], [0.01, -0.02], rtol=1e-5)
    np.testing.assert_allclose(res.state.u["w"], [1e-4, 4e-4], rtol=1e-5)
    assert res.state.step == 1


def test_fedadam_second_step_uses_previous_state() -> None:
    # m = 0.9·0.01 + 0.1·0.1 = 0.019; u = 0.99·1e-4 + 0.01·0.01 = 1.99e-4
    # step = 0.01·0.019/(√1.99e-4 + 1e-3) = 0.01·0.019/0.0151067
    s = FedOptSettings()
    first = run_fedopt({"w": f32(0.0)}, [upd("a", w=f32(0.1))], FedOptState(), s, 1)
    second = run_fedopt(first.global_tensors, [upd("a", w=f32(0.1))], first.state, s, 2)
    expected = 0.0090909091 + 0.01 * 0.019 / 0.0151067
    np.testing.assert_allclose(second.global_tensors["w"], [expected], rtol=1e-4)


PRIOR = FedOptState(m={"w": f32(0.0, 0.0)}, u={"w": f32(0.5, 1e-4)}, step=3)


@pytest.mark.parametrize(
    ("variant", "u_expected"),
    [
        # Δ² = [0.01, 0.04]
        ("adam", [0.99 * 0.5 + 0.01 * 0.01, 0.99 * 1e-4 + 0.01 * 0.04]),  # [0.4951, 0.000499]
        ("yogi", [0.5 - 0.01 * 0.01, 1e-4 + 0.01 * 0.04]),  # sign(u−Δ²) = [+1, −1]
        ("adagrad", [0.51, 0.0401]),  # u + Δ²
    ],
)
def test_fedopt_u_rule_per_variant(variant: str, u_expected: list[float]) -> None:
    s = FedOptSettings(variant=variant)  # type: ignore[arg-type]
    res = run_fedopt({"w": f32(0, 0)}, [upd("a", w=f32(0.1, -0.2))], PRIOR, s, 4)
    np.testing.assert_allclose(res.state.u["w"], u_expected, rtol=1e-5)


def test_fedyogi_step_uses_its_u() -> None:
    # u' = [0.4999, 0.0005], m' = [0.01, −0.02]: 0.01·m'/(√u' + 1e-3)
    s = FedOptSettings(variant="yogi")
    res = run_fedopt({"w": f32(0, 0)}, [upd("a", w=f32(0.1, -0.2))], PRIOR, s, 4)
    np.testing.assert_allclose(res.global_tensors["w"], [0.000141235743, -0.0085613947], rtol=1e-4)


def test_fedopt_bias_correction_scales_lr() -> None:
    # second step, t = 2: η_t = η·√(1−β2²)/(1−β1²) = 0.01·√0.0199/0.19
    s = FedOptSettings(bias_correction=True)
    res = run_fedopt({"w": f32(0.0)}, [upd("a", w=f32(0.1))], FedOptState(step=1), s, 2)
    assert res.metrics.extra["server_lr"] == pytest.approx(0.01 * 0.0199**0.5 / 0.19)


def test_fedopt_state_round_trips() -> None:
    back = FedOptState.from_dict(PRIOR.to_dict())
    assert back.step == 3 and back.u["w"].tolist() == PRIOR.u["w"].tolist()


# --- GSFS -------------------------------------------------------------------------------------

# a: f = 2, n = 10, based on the current version 5, full update (w and b)
# b: f = 1, n = 30, based on version 4 (stale by 1), partial update (w only)
GLOB = {"w": f32(0, 0), "b": f32(0)}


FREQS = {"a": 2, "b": 1, "c": 1}


def gsfs_updates() -> list[AcceptedUpdate]:
    return [
        upd("a", n=10, base=5, w=f32(1, 0), b=f32(3)),
        upd("b", n=30, base=4, w=f32(0, 1)),
    ]


def test_gsfs_alpha_from_frequencies() -> None:
    # α = 2/3, 1/3 -> w = [2/3, 1/3]
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings())
    np.testing.assert_allclose(res.global_tensors["w"], [2 / 3, 1 / 3], rtol=1e-6)


def test_gsfs_partial_tensor_normalised_over_its_senders() -> None:
    # only a sent b: its weight over senders is 1, so b moves by the full 3
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings())
    np.testing.assert_allclose(res.global_tensors["b"], [3.0], rtol=1e-6)


def test_gsfs_partial_tensor_counts_in_metrics() -> None:
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings())
    assert res.metrics.tensor_clients == {"w": 2, "b": 1}


def test_gsfs_sample_weighting_multiplies_by_n() -> None:
    # w = 2·10 = 20 and 1·30 = 30 -> α = 0.4, 0.6
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings(sample_weighting=True))
    assert res.metrics.weights == pytest.approx({"a": 0.4, "b": 0.6})


def test_gsfs_staleness_discount() -> None:
    # a = 1: a has s = 0 -> 2·1; b has s = 1 -> 1·(1+1)^−1 = 0.5 ; α = 0.8, 0.2
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings(staleness_exponent=1.0))
    np.testing.assert_allclose(res.global_tensors["w"], [0.8, 0.2], rtol=1e-6)


def test_gsfs_server_lr_scales_step() -> None:
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings(server_lr=0.5))
    np.testing.assert_allclose(res.global_tensors["w"], [1 / 3, 1 / 6], rtol=1e-6)


def test_gsfs_max_staleness_excludes_stale_entry() -> None:
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings(max_staleness=0))
    assert (res.metrics.clients, res.metrics.excluded) == (("a",), {"b": "too_stale"})


def test_gsfs_new_version_is_next() -> None:
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings())
    assert res.metrics.version == 6


@settings(max_examples=40, deadline=None)
@given(
    freqs=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    values=st.lists(st.floats(-100, 100, width=32), min_size=5, max_size=5),
)
def test_gsfs_step_is_convex_combination(freqs: list[int], values: list[float]) -> None:
    deltas = [f32(v) for v in values[: len(freqs)]]
    ups = [upd(f"c{i}", t=d) for i, d in enumerate(deltas)]
    by_client = {f"c{i}": f for i, f in enumerate(freqs)}
    res = run_gsfs({"t": f32(0)}, ups, 0, GsfsServerSettings(), by_client)
    got = float(res.global_tensors["t"][0])
    lo, hi = min(float(d[0]) for d in deltas), max(float(d[0]) for d in deltas)
    assert lo - 1e-3 <= got <= hi + 1e-3 and sum(res.metrics.weights.values()) == pytest.approx(1)


# --- accumulator and settings -----------------------------------------------------------------


def test_weighted_sum_rejects_shape_change() -> None:
    acc = WeightedSum()
    acc.add("a", {"w": f32(1, 2)}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        acc.add("b", {"w": f32(1, 2, 3)}, 1.0)


def test_weighted_sum_rejects_negative_weight() -> None:
    with pytest.raises(ValueError, match="weight"):
        WeightedSum().add("a", {"w": f32(1)}, -1.0)


def test_zero_sample_client_is_left_out_not_fatal() -> None:
    # n = 0 weighs nothing: the step is b's delta alone
    ups = [upd("a", n=0, w=f32(9, 9)), upd("b", n=2, w=f32(1, 2))]
    res = run_fedavg({"w": f32(0, 0)}, ups, FedAvgSettings(), 1)
    assert (res.global_tensors["w"].tolist(), res.metrics.excluded) == (
        [1.0, 2.0], {"a": "zero_weight"},
    )  # fmt: skip


def test_only_zero_weight_clients_is_an_empty_aggregation() -> None:
    with pytest.raises(EmptyAggregationError):
        run_fedavg({"w": f32(0)}, [upd("a", n=0, w=f32(1))], FedAvgSettings(), 1)


def test_strategy_settings_discriminated_by_name() -> None:
    parsed = TypeAdapter(StrategySettings).validate_python({"name": "fedopt", "variant": "yogi"})
    assert isinstance(parsed, FedOptSettings) and parsed.variant == "yogi"


def test_bad_quorum_fraction_names_the_field() -> None:
    with pytest.raises(ValidationError, match="quorum_fraction"):
        GsfsServerSettings(quorum_fraction=1.5)


def test_explicit_federation_size_required() -> None:
    with pytest.raises(ValidationError, match="federation_size"):
        GsfsServerSettings(federation_size_source="explicit")


# --- the blocked fold on tensors larger than one block ----------------------------------------


def test_fold_spanning_blocks_matches_numpy() -> None:
    from fedllm_server.strategies.weighted_sum import BLOCK

    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(2 * BLOCK + 5, dtype=np.float32) for _ in range(2))
    acc = WeightedSum()
    acc.add("a", {"t": a}, 1.0)
    acc.add("b", {"t": b}, 3.0)
    np.testing.assert_allclose(acc.take_mean()["t"], 0.25 * a + 0.75 * b, rtol=1e-5, atol=1e-6)


def test_fold_computes_norm_in_the_same_pass() -> None:
    from fedllm_server.strategies.weighted_sum import BLOCK

    delta = np.full(BLOCK + 3, 0.5, dtype=np.float32)  # ‖Δ‖ = 0.5·√(BLOCK + 3)
    acc = WeightedSum()
    acc.add("a", {"t": delta}, 1.0)
    assert acc.norms["a"] == pytest.approx(0.5 * (BLOCK + 3) ** 0.5, rel=1e-6)


def test_fold_accepts_non_contiguous_delta() -> None:
    # transposed view of [[1, 2], [3, 4]] is [[1, 3], [2, 4]]
    view = np.array([[1, 2], [3, 4]], dtype=np.float32).T
    res = run_fedavg({"w": np.zeros((2, 2), np.float32)}, [upd("a", w=view)],
                           FedAvgSettings(), 1)  # fmt: skip
    np.testing.assert_array_equal(res.global_tensors["w"], [[1, 3], [2, 4]])


def test_gsfs_partial_with_sample_weighting_normalises_per_tensor() -> None:
    # c sends only b; a sends b with w = 2·10 = 20, c with w = 1·20 = 20 -> b = 0.5·3 + 0.5·1
    ups = [*gsfs_updates(), upd("c", n=20, base=5, b=f32(1))]
    res = run_gsfs(GLOB, ups, 5, GsfsServerSettings(sample_weighting=True))
    np.testing.assert_allclose(res.global_tensors["b"], [2.0], rtol=1e-6)


def test_metrics_record_is_plain_types() -> None:
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings(max_staleness=0))
    assert res.metrics.to_dict()["excluded"] == {"b": "too_stale"}


# --- the contract -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedopt", "gsfs"])
def test_registry_builds_the_strategy_its_settings_name(name: str) -> None:
    settings_ = TypeAdapter(StrategySettings).validate_python({"name": name})
    assert make_strategy(settings_).name == name


def test_fold_uses_the_norm_the_door_measured() -> None:
    acc = WeightedSum()
    update = AcceptedUpdate("a", "u", 0, 0, 1, "round", 0.0, {}, {"w": f32(3, 4)}, norm=7.0)
    FedAvg(FedAvgSettings()).fold(acc, update, Weighing(0))
    assert acc.norms == {"a": 7.0}


def test_gsfs_zero_frequency_is_left_out() -> None:
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings(), {"a": 2, "b": 0})
    assert res.metrics.excluded == {"b": "zero_frequency"}


def test_gsfs_reports_the_largest_staleness_included() -> None:
    res = run_gsfs(GLOB, gsfs_updates(), 5, GsfsServerSettings())
    assert res.metrics.extra == {"max_staleness_included": 1.0}


def test_fedopt_state_round_trips_through_checkpoint_arrays() -> None:
    strategy = FedOpt(FedOptSettings())
    arrays, meta = strategy.state_to_arrays(PRIOR)
    back = strategy.state_from_arrays(arrays, meta)
    assert (back.step, back.u["w"].tolist(), meta) == (3, PRIOR.u["w"].tolist(), {"fedopt_step": 3})


def test_fedopt_without_saved_state_starts_fresh() -> None:
    assert FedOpt(FedOptSettings()).state_from_arrays({}, {"next_round": 2}) == FedOptState()


@pytest.mark.parametrize(
    ("strategy", "lag"), [(FedAvg(FedAvgSettings()), 0), (Gsfs(GsfsServerSettings()), 8)]
)
def test_max_lag_is_zero_for_rounds_and_the_door_bound_for_gsfs(strategy: Any, lag: int) -> None:
    assert strategy.max_lag(ValidationSettings(max_staleness=8)) == lag
