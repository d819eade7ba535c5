"""The door's default norm bound (issue 10, attack 10): absolute during warm-up, then c times
the median of the recently accepted norms; only accepted norms move it; it survives a restart
(the door state is checkpointed)."""

from __future__ import annotations

import numpy as np

from fedllm_proto.messages import RejectCode, TriggerReason, Update
from fedllm_server.strategies.settings import ValidationSettings
from fedllm_server.validation import (
    DoorRules,
    DoorState,
    GlobalRef,
    NormBoundSettings,
    Sender,
    Verdict,
    check_update,
)

REF = GlobalRef.from_tensors("fp", 0, {"w": np.zeros(2, np.float32)})
BOUND = NormBoundSettings(factor=10.0, history=4, min_history=3, warmup_bound=100.0)
RULES = DoorRules(ValidationSettings(rate_limit_updates=1000), 8, True, BOUND)


def _send(door: DoorState, norm: float, n: int) -> Verdict:
    delta = {"w": np.array([norm, 0.0], np.float32)}
    update = Update(f"u{n}", 0, -1, 1, TriggerReason.PERFORMANCE, {}, delta)
    return check_update(update, Sender(f"c{n}", "fp"), REF, RULES, door, float(n))


def _after(norms: list[float]) -> DoorState:
    door = DoorState()
    for n, norm in enumerate(norms):
        assert _send(door, norm, n).accepted
    return door


def test_the_warm_up_bound_applies_before_enough_history() -> None:
    assert _send(_after([1.0, 1.0]), 101.0, 9).code is RejectCode.NORM_TOO_LARGE


def test_within_the_warm_up_bound_passes_before_enough_history() -> None:
    assert _send(_after([1.0, 1.0]), 99.0, 9).accepted


def test_past_c_times_the_median_is_refused_once_warm() -> None:
    assert _send(_after([1.0, 2.0, 1.0]), 10.5, 9).code is RejectCode.NORM_TOO_LARGE


def test_within_c_times_the_median_passes_once_warm() -> None:
    assert _send(_after([1.0, 2.0, 1.0]), 9.5, 9).accepted


def test_the_median_follows_the_last_k_accepted_norms() -> None:
    door = _after([100.0, 100.0, 1.0, 1.0, 1.0, 1.0])  # K = 4: the 100s have aged out
    assert _send(door, 50.0, 9).code is RejectCode.NORM_TOO_LARGE


def test_refused_norms_do_not_enter_the_history() -> None:
    door = _after([1.0, 1.0, 1.0])
    _send(door, 1e6, 9)
    assert door.norms == [1.0, 1.0, 1.0]


def test_the_history_survives_a_restart() -> None:
    door = _after([1.0, 2.0, 3.0])
    assert DoorState.from_dict(door.to_dict(5.0), 0.0).norms == [1.0, 2.0, 3.0]


def test_a_door_state_saved_before_the_norm_bound_loads_with_no_history() -> None:
    assert DoorState.from_dict({"seen": {}, "buckets": {}}, 0.0).norms == []


def test_a_1e30_delta_is_refused_with_its_real_norm() -> None:
    verdict = _send(DoorState(), 1e30, 0)  # its square overflows float32
    assert (verdict.code, round((verdict.norm or 0.0) / 1e30, 6)) == (
        RejectCode.NORM_TOO_LARGE,
        1.0,
    )


def test_the_bound_can_be_switched_off() -> None:
    rules = DoorRules(RULES.settings, 8, True, NormBoundSettings(enabled=False))
    update = Update("u", 0, -1, 1, TriggerReason.PERFORMANCE, {}, {"w": np.float32([1e30, 0])})
    assert check_update(update, Sender("c", "fp"), REF, rules, DoorState(), 0.0).accepted
