"""The GSFS schedule: quorum, timeout, replacement, windowed frequencies, checkpoint round trip,
all with explicit `now` and no tensors."""

from __future__ import annotations

import numpy as np
import pytest
from fedserver_testkit import accepted
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm_server.schedule import Aggregate, Drop, RoundConfig
from fedllm_server.schedule.base import ScheduleContext
from fedllm_server.schedule.gsfs import GsfsSchedule, quorum_size
from fedllm_server.strategies import GsfsServerSettings, aggregate
from fedllm_server.strategies.gsfs import Gsfs

ROUNDS = RoundConfig(1.0, 1, 1, 1.0)


def _pool(s: GsfsServerSettings | None = None, now: float = 0.0, n: int = 5) -> GsfsSchedule:
    schedule = GsfsSchedule(s or GsfsServerSettings(), max_lag=8, now=now)
    for i in range(n):
        schedule.joined(f"member-{i}", now)  # N = n enrolled clients
    return schedule


def _add(schedule: GsfsSchedule, cid: str, t: float, uid: str = "") -> list[object]:
    return list(schedule.accepted(accepted(cid, uid or f"{cid}-{t}"), t))


def _take(schedule: GsfsSchedule, now: float) -> Aggregate:
    (agg,) = schedule.poll(now)
    assert isinstance(agg, Aggregate)
    return agg


def test_quorum_is_ceil_q_n() -> None:
    assert quorum_size(GsfsServerSettings(quorum_fraction=0.6), enrolled=5) == 3


def test_quorum_is_exact_where_float_product_overshoots() -> None:
    # 0.07·100 is 7.000000000000001 in floats; K must still be 7
    assert quorum_size(GsfsServerSettings(quorum_fraction=0.07), enrolled=100) == 7


def test_quorum_uses_explicit_federation_size() -> None:
    s = GsfsServerSettings(federation_size_source="explicit", federation_size=10)
    assert quorum_size(s, enrolled=3) == 6


def test_any_update_is_expected() -> None:
    assert _pool().expects("anyone", -1)


def test_no_aggregation_below_quorum() -> None:
    pool = _pool()
    _add(pool, "a", 1)
    _add(pool, "b", 2)
    assert pool.poll(3.0) == []


def test_quorum_of_distinct_clients_aggregates() -> None:
    pool = _pool()
    for cid in "abc":
        _add(pool, cid, 1)
    assert _take(pool, 1.0).reason == "quorum"


def test_aggregation_names_the_pooled_updates_with_their_frequencies() -> None:
    pool = _pool(GsfsServerSettings(frequency_cap=0))  # the paper's uncapped f_i
    _add(pool, "a", 1, "a1")
    _add(pool, "b", 2, "b1")
    _add(pool, "a", 3, "a2")
    _add(pool, "c", 4, "c1")
    assert _take(pool, 4.0).fold == {"b1": 1, "a2": 2, "c1": 1}  # latest arrival order


def test_resubmission_drops_the_older_update() -> None:
    pool = _pool()
    _add(pool, "a", 1, "a1")
    assert _add(pool, "a", 2, "a2") == [Drop(("a1",))]


def test_resubmission_does_not_make_quorum() -> None:
    pool = _pool()
    _add(pool, "a", 1)
    _add(pool, "b", 1)
    _add(pool, "a", 2)
    assert (len(pool.entries), pool.poll(2.0)) == (2, [])


def test_timeout_needs_min_clients() -> None:
    pool = _pool(GsfsServerSettings(max_wait_s=10, min_clients=2), n=10)
    _add(pool, "a", 0)
    assert pool.poll(50.0) == []


def test_timeout_fires_after_max_wait_with_min_clients() -> None:
    pool = _pool(GsfsServerSettings(max_wait_s=10, min_clients=2), n=10)
    _add(pool, "a", 0)
    _add(pool, "b", 4)
    assert (pool.poll(9.9), _take(pool, 10.0).reason) == ([], "timeout")


def test_next_deadline_counts_from_first_arrival() -> None:
    pool = _pool(GsfsServerSettings(max_wait_s=10, min_clients=2), n=10)
    _add(pool, "a", 3)
    _add(pool, "b", 4)
    assert pool.next_deadline(5.0) == 13.0


def test_next_deadline_from_last_aggregation() -> None:
    s = GsfsServerSettings(max_wait_s=10, min_clients=1, wait_from="last_aggregation")
    pool = _pool(s, now=100.0, n=10)
    _add(pool, "a", 104)
    assert pool.next_deadline(105.0) == 110.0


def test_next_deadline_none_while_only_an_arrival_can_help() -> None:
    pool = _pool(GsfsServerSettings(max_wait_s=10, min_clients=2), n=10)
    _add(pool, "a", 3)
    assert pool.next_deadline(5.0) is None


def test_next_deadline_is_now_when_due() -> None:
    pool = _pool(GsfsServerSettings(quorum_fraction=0.5), n=2)
    _add(pool, "a", 3)
    assert pool.next_deadline(5.0) == 5.0


def test_enrolment_grows_the_quorum() -> None:
    pool = _pool(GsfsServerSettings(quorum_fraction=0.5), n=2)
    pool.joined("late", 0.0)  # N = 3 -> K = 2
    _add(pool, "a", 1)
    assert pool.poll(1.0) == []


def test_aggregation_empties_the_pool_and_reports_the_wait() -> None:
    pool = _pool(GsfsServerSettings(max_wait_s=5))
    _add(pool, "a", 2)
    agg = _take(pool, 7.0)
    assert (agg.reason, agg.waited_s, pool.entries) == ("timeout", 5.0, {})


def _a_frequency(window: int | None, cap: int = 0) -> dict[str, int]:
    """Period 1: a×3, b×1. Period 2: a×1, c×1. Period 3 (open): a×1."""
    s = GsfsServerSettings(frequency_window=window, frequency_cap=cap)
    pool = _pool(s, n=100)
    for t, cid in enumerate("aaab"):
        _add(pool, cid, t)
    pool._take(10, "quorum")
    _add(pool, "a", 11)
    _add(pool, "c", 12)
    pool._take(20, "quorum")
    _add(pool, "a", 21)
    return pool.frequencies()


def test_frequency_window_all_history() -> None:
    assert _a_frequency(None)["a"] == 5  # 3 + 1 + 1


def test_frequency_window_two_aggregations() -> None:
    assert _a_frequency(2)["a"] == 2  # period 2 + period 3


def test_frequency_window_one_is_current_period_only() -> None:
    assert _a_frequency(1) == {"a": 1}


def test_the_default_cap_counts_one_upload_per_period() -> None:
    assert GsfsServerSettings().frequency_cap == 1


def test_frequency_cap_bounds_each_closed_period_in_all_history() -> None:
    assert _a_frequency(None, cap=2)["a"] == 4  # min(3, 2) + 1 + 1


def test_frequency_cap_of_one_counts_the_periods_uploaded_in() -> None:
    assert _a_frequency(None, cap=1) == {"a": 3, "b": 1, "c": 1}


def test_frequency_cap_bounds_the_open_period() -> None:
    pool = _pool(GsfsServerSettings(frequency_cap=2), n=100)
    for t in range(20):
        _add(pool, "a", t)
    assert pool.frequencies() == {"a": 2}


def test_frequency_cap_bounds_periods_inside_a_window() -> None:
    assert _a_frequency(3, cap=2)["a"] == 4  # min(3, 2) + 1 + 1 over W = 3


def test_frequency_cap_leaves_the_raw_counts_in_the_checkpoint() -> None:
    pool = _pool(GsfsServerSettings(frequency_cap=1), n=100)
    for t in range(3):
        _add(pool, "a", t)
    assert pool.snapshot(5.0)["pool"]["current"] == {"a": 3}


def test_checkpoint_round_trip_rebases_times() -> None:
    s = GsfsServerSettings(max_wait_s=10, min_clients=2)
    pool = _pool(s, now=90.0, n=10)
    _add(pool, "a", 95)
    _add(pool, "b", 96)
    ctx = ScheduleContext(ROUNDS, 0, 8, 0, pool.snapshot(100.0), now=1000.0)  # new clock
    back = GsfsSchedule.restore(s, ctx)
    assert back.opened_at == 995.0


def test_checkpoint_round_trip_keeps_frequencies_and_enrolment() -> None:
    s = GsfsServerSettings(frequency_cap=0)
    pool = _pool(s, n=3)
    _add(pool, "a", 1)
    _add(pool, "a", 2)
    ctx = ScheduleContext(ROUNDS, 0, 8, 0, pool.snapshot(5.0), now=5.0)
    back = GsfsSchedule.restore(s, ctx)
    assert (back.frequencies(), len(back.enrolled)) == ({"a": 2}, 3)


def test_the_checkpoint_holds_no_entries() -> None:
    pool = _pool()
    _add(pool, "a", 1)
    assert pool.snapshot(2.0)["pool"]["entries"] == []  # the pool log brings them back


def test_replayed_updates_are_pooled_again_now() -> None:
    pool = _pool(GsfsServerSettings(max_wait_s=10, min_clients=1), n=10)
    actions = pool.replayed([accepted("a", "a1"), accepted("a", "a2")], 50.0)
    assert (actions, pool.entries, pool.next_deadline(50.0)) == (
        [Drop(("a1",))],
        {"a": "a2"},
        60.0,
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcd"), min_size=1, max_size=8), min_size=1, max_size=5))
def test_unwindowed_frequency_counts_every_upload(periods: list[list[str]]) -> None:
    pool = _pool(GsfsServerSettings(frequency_cap=0), n=0)
    t = 0.0
    for uploads in periods:
        for cid in uploads:
            t += 1
            _add(pool, cid, t)
        freqs = pool.frequencies()
        pool._take(t, "quorum")
    everything = [cid for uploads in periods for cid in uploads]
    assert freqs == {cid: everything.count(cid) for cid in set(everything)}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcd"), min_size=1, max_size=8), min_size=1, max_size=5))
def test_capped_frequency_counts_the_periods_a_client_uploaded_in(
    periods: list[list[str]],
) -> None:
    pool = _pool(n=0)  # the default cap: one upload per period
    t = 0.0
    for uploads in periods:
        for cid in uploads:
            t += 1
            _add(pool, cid, t)
        freqs = pool.frequencies()
        pool._take(t, "quorum")
    expected = {cid: sum(cid in uploads for uploads in periods) for cid in "abcd"}
    assert freqs == {cid: n for cid, n in expected.items() if n}


def _flood_weight(cap: int) -> float:
    """The attacker's α after 20 uploads, then one each from two honest clients (K = 3)."""
    s = GsfsServerSettings(frequency_cap=cap)
    pool = _pool(s, n=5)
    updates = {}
    for t in range(20):
        updates[f"x{t}"] = accepted("attacker", f"x{t}")
        pool.accepted(updates[f"x{t}"], float(t))
    for cid in ("h1", "h2"):
        updates[cid] = accepted(cid, cid)
        pool.accepted(updates[cid], 30.0)
    fold = _take(pool, 30.0).fold
    freqs = {updates[uid].client_id: f for uid, f in fold.items()}
    glob = {"w": np.zeros(1, np.float32)}
    result = aggregate(Gsfs(s), glob, [updates[uid] for uid in fold], None, 1, freqs)
    return result.metrics.weights["attacker"]


def test_an_uncapped_flood_takes_twenty_of_twenty_two_parts() -> None:
    assert _flood_weight(0) == pytest.approx(20 / 22)


def test_a_cap_of_two_leaves_the_flood_two_of_four_parts() -> None:
    assert _flood_weight(2) == pytest.approx(2 / 4)


def test_the_default_cap_gives_the_flood_one_part_in_three() -> None:
    assert _flood_weight(1) == pytest.approx(1 / 3)
