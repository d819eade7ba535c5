"""Door checks: one test per reject code, the check order, and the bounded state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedllm_proto.codec import Encoding
from fedllm_proto.messages import TriggerReason, Update
from fedllm_server.strategies import ValidationSettings
from fedllm_server.validation import (
    DoorRules,
    DoorState,
    GlobalRef,
    RejectCode,
    Sender,
    Verdict,
    check_update,
)

GLOBAL = {"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)}
REF = GlobalRef.from_tensors("fp1", version=10, tensors=GLOBAL)
SETTINGS = ValidationSettings(max_l2_norm=10.0, max_staleness=2)


@dataclass(frozen=True)
class Arrival:
    update: Update
    sender: Sender


def message(uid: str, base: int, n: int, tensors: dict[str, np.ndarray]) -> Update:
    """An Update; one the wire would refuse to build (n < 0) is built anyway, fields set one
    by one, because the door must not rely on the codec's checks."""
    fields = (uid, base, -1, n, TriggerReason.PERFORMANCE, {"f1_macro": 0.5}, tensors)
    try:
        return Update(*fields)
    except Exception:
        msg = object.__new__(Update)
        names = ("update_id", "base_version", "round", "sample_count", "trigger", "metrics")
        values = (*fields, Encoding.RAW)
        for name, value in zip((*names, "tensors", "encoding"), values, strict=True):
            object.__setattr__(msg, name, value)
        return msg


def view(
    uid: str = "u1",
    base: int = 10,
    fp: str = "fp1",
    cid: str = "c1",
    n: int = 10,
    **tensors: np.ndarray,
) -> Arrival:
    tensors = tensors or {"a": np.ones((2, 2), np.float32), "b": np.ones(3, np.float32)}
    return Arrival(message(uid, base, n, tensors), Sender(cid, fp))


def judge(
    arrival: Arrival,
    settings_: ValidationSettings = SETTINGS,
    door: DoorState | None = None,
    now: float = 0.0,
    *,
    sync: bool = False,
) -> Verdict:
    """The door as FedAvg/FedOpt (`sync`: no lag, every tensor) or GSFS use it."""
    rules = DoorRules(settings_, 0 if sync else settings_.max_staleness, exact=sync)
    return check_update(arrival.update, arrival.sender, REF, rules, door or DoorState(), now)


def validate_update(
    arrival: Arrival, ref: GlobalRef, settings_: ValidationSettings, door: DoorState, now: float
) -> RejectCode | None:
    assert ref is REF
    return judge(arrival, settings_, door, now).code


def verdict(
    update: Arrival, door: DoorState | None = None, now: float = 0.0, *, sync: bool = False
) -> RejectCode | None:
    return judge(update, SETTINGS, door, now, sync=sync).code


def test_good_update_accepted() -> None:
    assert verdict(view()) is None


def test_accepted_verdict_carries_norm() -> None:
    # 7 ones -> ‖Δ‖ = √7
    got = judge(view())
    assert got.norm == pytest.approx(7**0.5)


def test_accepted_verdict_carries_the_record_with_that_norm() -> None:
    got = judge(view(uid="x", cid="c9"))
    assert got.update is not None and (got.update.update_id, got.update.client_id) == ("x", "c9")
    assert got.update.norm == got.norm


def test_rejected_verdict_carries_no_record() -> None:
    assert judge(view(base=11)).update is None


def test_fingerprint_mismatch() -> None:
    assert verdict(view(fp="other")) == RejectCode.FINGERPRINT_MISMATCH


def test_unknown_tensor_name() -> None:
    assert (
        verdict(view(a=np.ones((2, 2), np.float32), z=np.ones(1, np.float32))) == "tensor_mismatch"
    )


def test_wrong_shape() -> None:
    assert verdict(view(a=np.ones((4,), np.float32))) == RejectCode.TENSOR_MISMATCH


def test_wrong_dtype() -> None:
    assert verdict(view(a=np.ones((2, 2), np.float64))) == RejectCode.TENSOR_MISMATCH


def test_partial_update_accepted_for_async() -> None:
    assert verdict(view(b=np.ones(3, np.float32))) is None


def test_partial_update_refused_for_sync() -> None:
    assert verdict(view(b=np.ones(3, np.float32)), sync=True) == RejectCode.TENSOR_MISMATCH


def test_empty_update_refused() -> None:
    assert verdict(Arrival(message("u", 10, 10, {}), Sender("c1", "fp1"))) == "tensor_mismatch"


def test_nan_is_non_finite() -> None:
    assert verdict(view(b=np.array([0, np.nan, 0], np.float32))) == RejectCode.NON_FINITE


def test_inf_is_non_finite() -> None:
    assert verdict(view(b=np.array([0, -np.inf, 0], np.float32))) == RejectCode.NON_FINITE


def test_norm_too_large() -> None:
    # ‖[6, 8, 0.1]‖ ≈ 10.0005 > 10
    assert verdict(view(b=np.array([6, 8, 0.1], np.float32))) == RejectCode.NORM_TOO_LARGE


def test_huge_finite_values_are_norm_not_nan() -> None:
    # squares overflow float32, values are finite: too large, not non-finite
    assert verdict(view(b=np.array([3e38, 0, 0], np.float32))) == RejectCode.NORM_TOO_LARGE


def test_no_norm_bound_by_default() -> None:
    big = view(b=np.array([600, 800, 0], np.float32))
    assert validate_update(big, REF, ValidationSettings(), DoorState(), 0.0) is None


def test_future_version() -> None:
    assert verdict(view(base=11)) == RejectCode.FUTURE_VERSION


def test_too_stale() -> None:
    assert verdict(view(base=7)) == RejectCode.TOO_STALE  # lags by 3 > 2


def test_stale_within_bound_accepted() -> None:
    assert verdict(view(base=8)) is None


def test_sync_requires_current_version() -> None:
    assert verdict(view(base=9), sync=True) == RejectCode.TOO_STALE


def test_replay_of_accepted_update() -> None:
    door = DoorState()
    verdict(view(uid="x"), door)
    assert verdict(view(uid="x"), door, now=1.0) == RejectCode.REPLAY


def test_rejected_update_id_may_be_resent() -> None:
    door = DoorState()
    verdict(view(uid="x", b=np.array([np.nan, 0, 0], np.float32)), door)
    assert verdict(view(uid="x"), door, now=1.0) is None


def test_replay_memory_is_bounded_lru() -> None:
    door, s = DoorState(), ValidationSettings(replay_memory=2, rate_limit_updates=100)
    for i in range(3):
        validate_update(view(uid=f"u{i}"), REF, s, door, float(i))
    assert list(door.seen["c1"]) == ["u1", "u2"]


def test_rate_limited_after_capacity() -> None:
    door, s = DoorState(), ValidationSettings(rate_limit_updates=2, rate_limit_window_s=10)
    codes = [validate_update(view(uid=f"u{i}"), REF, s, door, 0.0) for i in range(3)]
    assert codes == [None, None, RejectCode.RATE_LIMITED]


def test_rate_limit_refills_over_time() -> None:
    # capacity 2 per 10 s refills 0.2 token/s: one token after 5 s
    door, s = DoorState(), ValidationSettings(rate_limit_updates=2, rate_limit_window_s=10)
    for i in range(2):
        validate_update(view(uid=f"u{i}"), REF, s, door, 0.0)
    assert validate_update(view(uid="late"), REF, s, door, 5.0) is None


def test_rate_limit_is_per_client() -> None:
    door, s = DoorState(), ValidationSettings(rate_limit_updates=1)
    validate_update(view(uid="u1", cid="c1"), REF, s, door, 0.0)
    assert validate_update(view(uid="u1", cid="c2"), REF, s, door, 0.0) is None


def test_bad_tensors_still_cost_a_token() -> None:
    door, s = DoorState(), ValidationSettings(rate_limit_updates=1)
    validate_update(view(uid="u1", a=np.ones(9, np.float32)), REF, s, door, 0.0)
    assert validate_update(view(uid="u2"), REF, s, door, 0.0) == RejectCode.RATE_LIMITED


def test_zero_sample_count_is_unexpected() -> None:
    assert verdict(view(n=0, b=np.ones(3, np.float32))) == RejectCode.UNEXPECTED


@pytest.mark.parametrize("n", [-1, -(2**63), 2**63 - 1, SETTINGS.max_sample_count + 1])
def test_sample_count_outside_one_to_the_cap_is_unexpected(n: int) -> None:
    assert verdict(view(n=n)) == RejectCode.UNEXPECTED


def test_sample_count_at_the_cap_is_accepted() -> None:
    assert verdict(view(n=SETTINGS.max_sample_count)) is None


def test_sample_count_cap_comes_from_the_settings() -> None:
    s = ValidationSettings(max_sample_count=50)
    assert validate_update(view(n=51), REF, s, DoorState(), 0.0) == RejectCode.UNEXPECTED


def test_sample_count_is_checked_before_a_rate_limit_token_is_taken() -> None:
    door, s = DoorState(), ValidationSettings(rate_limit_updates=1)
    validate_update(view(uid="u1", n=0), REF, s, door, 0.0)
    assert validate_update(view(uid="u2"), REF, s, door, 0.0) is None


def test_non_finite_reject_names_the_tensor() -> None:
    update = view(a=np.ones((2, 2), np.float32), b=np.array([0, np.nan, 0], np.float32))
    detail = judge(update).detail
    assert "'b'" in detail


def test_norm_of_huge_finite_values_is_finite_and_exact() -> None:
    update = view(a=np.full((2, 2), 1e30, np.float32), b=np.zeros(3, np.float32))
    got = judge(update, ValidationSettings())
    assert got.norm == pytest.approx(2e30, rel=1e-6)


def test_fingerprint_checked_before_version() -> None:
    assert verdict(view(fp="other", base=99)) == RejectCode.FINGERPRINT_MISMATCH


def test_door_state_round_trips_with_new_clock() -> None:
    door, s = DoorState(), ValidationSettings(rate_limit_updates=1, rate_limit_window_s=10)
    validate_update(view(uid="u1"), REF, s, door, 100.0)
    back = DoorState.from_dict(door.to_dict(now=101.0), now=5.0)  # 1 s elapsed: 0.1 token
    codes = (validate_update(view(uid="u1"), REF, s, back, 5.0),
             validate_update(view(uid="u2"), REF, s, back, 5.0))  # fmt: skip
    assert codes == (RejectCode.REPLAY, RejectCode.RATE_LIMITED)


def test_reject_codes_match_the_wire_names() -> None:
    assert {c.value for c in RejectCode} == {
        "fingerprint_mismatch", "tensor_mismatch", "non_finite", "norm_too_large",
        "future_version", "too_stale", "replay", "rate_limited", "unexpected",
    }  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(
    where=st.integers(0, 6),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    values=hnp.arrays(np.float32, 7, elements=st.floats(-1, 1, width=32)),
)
def test_any_non_finite_entry_is_rejected(where: int, bad: float, values: np.ndarray) -> None:
    values[where] = bad
    update = view(a=values[:4].reshape(2, 2).copy(), b=values[4:].copy())
    assert verdict(update) == RejectCode.NON_FINITE
