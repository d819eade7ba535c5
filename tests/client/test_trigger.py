"""The GSFS client trigger against hand-computed sequences."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from fedllm_client.trigger import (
    Decision,
    FireReason,
    Observation,
    TriggerSettings,
    TriggerState,
    decide,
    initial_state,
    is_check_step,
    on_broadcast,
    significant_layers,
)

# β = 0.5 and κ = 1 keep the arithmetic by hand short.
BASE = TriggerSettings(
    check_every=1, beta=0.5, kappa=1.0, warmup_steps=0, max_silence_steps=None,
    min_steps_between_uploads=0,
)  # fmt: skip


def run(
    settings: TriggerSettings,
    norms: Sequence[dict[str, float]],
    state: TriggerState | None = None,
    metrics: Sequence[float | None] | None = None,
) -> tuple[list[Decision], TriggerState]:
    """Feed observations at steps 1, 2, ...; return every decision and the last state."""
    state = state or initial_state()
    decisions = []
    for i, layer_norms in enumerate(norms):
        metric = metrics[i] if metrics else None
        d, state = decide(state, Observation(i + 1, layer_norms, metric), settings)
        decisions.append(d)
    return decisions, state


SPIKE = [{"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 3.0}]
# layer b: seed μ = 1, s = 0; then μ = 1, s = 0; then μ = 0.5·1 + 0.5·3 = 2,
# s = 0.5·0 + 0.5·|3 − 2| = 0.5, τ = 2 + 1·0.5 = 2.5 < 3 -> fires on b


def test_steady_norms_do_not_fire() -> None:
    decisions, _ = run(BASE, SPIKE[:2])
    assert [d.fire for d in decisions] == [False, False]


def test_spike_fires_gradient_norm_on_that_layer() -> None:
    decisions, _ = run(BASE, SPIKE)
    last = decisions[-1]
    assert (last.fire, last.reason, last.layer) == (True, FireReason.GRADIENT_NORM, "b")


def test_spike_threshold_value() -> None:
    decisions, _ = run(BASE, SPIKE)
    assert decisions[-1].values == pytest.approx({"g": 3.0, "tau": 2.5})


def test_ema_statistics_after_spike() -> None:
    _, state = run(BASE, SPIKE)
    assert (state.mu["b"], state.dev["b"]) == pytest.approx((2.0, 0.5))


def test_ema_var_threshold() -> None:
    # v = 0.5·0 + 0.5·(3 − 2)² = 0.5 ; τ = 2 + √0.5 = 2.70711
    decisions, _ = run(BASE.model_copy(update={"deviation": "ema_var"}), SPIKE)
    assert decisions[-1].values["tau"] == pytest.approx(2.0 + 0.5**0.5)


def test_threshold_from_previous_statistics() -> None:
    # previous μ = 1, s = 0 -> τ = 1
    decisions, _ = run(BASE.model_copy(update={"threshold_from": "previous"}), SPIKE)
    assert decisions[-1].values["tau"] == pytest.approx(1.0)


def test_smaller_spike_below_threshold_does_not_fire() -> None:
    # g = 1.2: μ = 1.1, s = 0.05; with κ = 3, τ = 1.1 + 0.15 = 1.25 > 1.2: no fire
    spike = [*SPIKE[:2], {"a": 1.0, "b": 1.2}]
    decisions, _ = run(BASE.model_copy(update={"kappa": 3.0}), spike)
    assert decisions[-1].fire is False


def test_warmup_suppresses_gradient_trigger() -> None:
    decisions, _ = run(BASE.model_copy(update={"warmup_steps": 5}), SPIKE)
    assert decisions[-1].fire is False


def test_warmup_still_updates_statistics() -> None:
    _, state = run(BASE.model_copy(update={"warmup_steps": 5}), SPIKE)
    assert state.mu["b"] == pytest.approx(2.0)


def test_performance_trigger_fires_past_delta() -> None:
    # M_ref = 0.80: |0.805 − 0.80| = 0.005 ≤ 0.01, |0.82 − 0.80| = 0.02 > 0.01
    flat = [{"a": 1.0}] * 2
    decisions, _ = run(BASE, flat, initial_state(metric=0.80), metrics=[0.805, 0.82])
    assert [(d.fire, d.reason) for d in decisions] == [
        (False, None), (True, FireReason.PERFORMANCE)
    ]  # fmt: skip


def test_performance_fire_moves_reference() -> None:
    # after firing at 0.82, M_ref = 0.82, so 0.825 does not fire
    flat = [{"a": 1.0}] * 3
    decisions, state = run(BASE, flat, initial_state(metric=0.80), metrics=[0.82, 0.825, None])
    assert (decisions[1].fire, state.m_ref) == (False, 0.82)


def test_performance_checked_before_gradient() -> None:
    decisions, _ = run(BASE, SPIKE, initial_state(metric=0.5), metrics=[0.5, 0.5, 0.7])
    assert decisions[-1].reason == FireReason.PERFORMANCE


def test_max_silence_forces_upload() -> None:
    s = BASE.model_copy(update={"max_silence_steps": 3})
    decisions, state = run(s, [{"a": 1.0}] * 3)
    assert ([d.fire for d in decisions], decisions[-1].reason, state.last_upload_step) == (
        [False, False, True], FireReason.MAX_SILENCE, 3,
    )  # fmt: skip


def test_min_gap_holds_back_a_trigger() -> None:
    s = BASE.model_copy(update={"min_steps_between_uploads": 5})
    decisions, _ = run(s, SPIKE)  # fires at step 3 < 5 steps since start
    last = decisions[-1]
    assert (last.fire, last.reason, last.suppressed) == (False, FireReason.GRADIENT_NORM, "min_gap")


def test_min_gap_allows_after_gap() -> None:
    s = BASE.model_copy(update={"min_steps_between_uploads": 3})
    decisions, _ = run(s, SPIKE)  # step 3 − 0 ≥ 3
    assert decisions[-1].fire is True


def test_broadcast_resets_reference_metric() -> None:
    # M_ref 0.80 -> 0.90 on broadcast; 0.905 is within δ of the new reference
    state = on_broadcast(initial_state(metric=0.80), step=0, metric=0.90, settings=BASE)
    decisions, _ = run(BASE, [{"a": 1.0}], state, metrics=[0.905])
    assert decisions[0].fire is False


def test_broadcast_keeps_statistics_by_default() -> None:
    _, state = run(BASE, SPIKE)
    assert on_broadcast(state, 3, 0.9, BASE).mu == state.mu


def test_broadcast_can_reset_statistics_and_warmup() -> None:
    s = BASE.model_copy(update={"reset_stats_on_broadcast": True, "warmup_steps": 10})
    _, state = run(s, SPIKE)
    fresh = on_broadcast(state, 3, 0.9, s)
    assert (dict(fresh.mu), fresh.stats_since_step) == ({}, 3)


def test_is_check_step_every_n() -> None:
    s = TriggerSettings(check_every=10)
    st = initial_state()
    assert (is_check_step(st, 9, s), is_check_step(st, 10, s)) == (False, True)


def test_state_round_trips() -> None:
    _, state = run(BASE, SPIKE, initial_state(metric=0.5), metrics=[0.5, 0.5, 0.5])
    assert TriggerState.from_dict(state.to_dict()) == state


def test_max_silence_below_min_gap_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_silence_steps"):
        TriggerSettings(max_silence_steps=5, min_steps_between_uploads=10)


def test_all_layers_when_partial_off() -> None:
    assert significant_layers({"a": 0.0, "b": 1.0}, {"a": 1, "b": 1}, BASE) == ["a", "b"]


def test_significant_layers_by_relative_change() -> None:
    s = BASE.model_copy(update={"partial_updates": True, "partial_min_relative_change": 1e-3})
    changes, mags = {"a": 0.01, "b": 1e-5, "c": 0.5}, {"a": 1.0, "b": 1.0, "c": 100.0}
    assert significant_layers(changes, mags, s) == ["a", "c"]  # b: 1e-5 < 1e-3


def test_largest_layer_always_sent() -> None:
    s = BASE.model_copy(update={"partial_updates": True, "partial_min_relative_change": 1.0})
    assert significant_layers({"a": 0.1, "b": 0.2}, {"a": 1.0, "b": 1.0}, s) == ["b"]


def test_unreachable_gradient_trigger_is_refused() -> None:
    # κ·(1−β) = 2·0.5 = 1: (g − μ)·(1 − 1) > κ·s can never hold
    with pytest.raises(ValidationError, match="never fire"):
        TriggerSettings(kappa=2.0, beta=0.5)


def test_huge_spike_fires_near_the_reachability_limit() -> None:
    # κ·(1−β) = 1.5·0.5 = 0.75 < 1: from μ = 1, s = 0 a jump to 100 fires
    s = BASE.model_copy(update={"kappa": 1.5})
    decisions, _ = run(s, [{"a": 1.0}, {"a": 1.0}, {"a": 100.0}])
    assert decisions[-1].fire is True
