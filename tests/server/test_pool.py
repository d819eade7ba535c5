"""The GSFS pool: quorum, timeout, replacement, windowed frequencies, checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedllm_server.pool import GsfsPool, PoolEntry, quorum_size
from fedllm_server.strategies import EmptyAggregationError, GsfsServerSettings


def entry(cid: str, t: float, uid: str = "", base: int = 0) -> PoolEntry:
    tensors = {"w": np.array([float(t)], dtype=np.float32)}
    return PoolEntry(cid, uid or f"{cid}-{t}", base, t, 10, "gradient_norm", tensors)


def test_quorum_is_ceil_q_n() -> None:
    assert quorum_size(GsfsServerSettings(quorum_fraction=0.6), enrolled=5) == 3


def test_quorum_is_exact_where_float_product_overshoots() -> None:
    # 0.07·100 is 7.000000000000001 in floats; K must still be 7
    assert quorum_size(GsfsServerSettings(quorum_fraction=0.07), enrolled=100) == 7


def test_quorum_uses_explicit_federation_size() -> None:
    s = GsfsServerSettings(federation_size_source="explicit", federation_size=10)
    assert quorum_size(s, enrolled=3) == 6


def test_not_due_below_quorum() -> None:
    pool = GsfsPool(GsfsServerSettings(), now=0.0)
    pool.add(entry("a", 1))
    pool.add(entry("b", 2))
    assert pool.due(3.0, enrolled=5) is None


def test_due_at_quorum_of_distinct_clients() -> None:
    pool = GsfsPool(GsfsServerSettings(), now=0.0)
    for cid in "abc":
        pool.add(entry(cid, 1))
    assert pool.due(1.0, enrolled=5) == "quorum"


def test_resubmission_replaces_and_does_not_make_quorum() -> None:
    pool = GsfsPool(GsfsServerSettings(), now=0.0)
    pool.add(entry("a", 1))
    pool.add(entry("b", 1))
    replaced = pool.add(entry("a", 2))
    assert (replaced, len(pool.entries), pool.due(2.0, enrolled=5)) == (True, 2, None)


def test_replacement_keeps_newest_and_counts_every_upload() -> None:
    pool = GsfsPool(GsfsServerSettings(), now=0.0)
    pool.add(entry("a", 1))
    pool.add(entry("a", 2))
    batch = pool.take(3.0, "quorum")
    assert (batch.updates[0].tensors["w"].tolist(), batch.updates[0].frequency) == ([2.0], 2)


def test_timeout_needs_min_clients() -> None:
    pool = GsfsPool(GsfsServerSettings(max_wait_s=10, min_clients=2), now=0.0)
    pool.add(entry("a", 0))
    assert pool.due(50.0, enrolled=10) is None


def test_timeout_fires_after_max_wait_with_min_clients() -> None:
    pool = GsfsPool(GsfsServerSettings(max_wait_s=10, min_clients=2), now=0.0)
    pool.add(entry("a", 0))
    pool.add(entry("b", 4))
    assert (pool.due(9.9, enrolled=10), pool.due(10.0, enrolled=10)) == (None, "timeout")


def test_next_deadline_counts_from_first_arrival() -> None:
    pool = GsfsPool(GsfsServerSettings(max_wait_s=10, min_clients=2), now=0.0)
    pool.add(entry("a", 3))
    pool.add(entry("b", 4))
    assert pool.next_deadline(5.0, enrolled=10) == 13.0


def test_next_deadline_from_last_aggregation() -> None:
    s = GsfsServerSettings(max_wait_s=10, min_clients=1, wait_from="last_aggregation")
    pool = GsfsPool(s, now=100.0)
    pool.add(entry("a", 104))
    assert pool.next_deadline(105.0, enrolled=10) == 110.0


def test_next_deadline_none_while_only_an_arrival_can_help() -> None:
    pool = GsfsPool(GsfsServerSettings(max_wait_s=10, min_clients=2), now=0.0)
    pool.add(entry("a", 3))
    assert pool.next_deadline(5.0, enrolled=10) is None


def test_next_deadline_is_now_when_due() -> None:
    pool = GsfsPool(GsfsServerSettings(quorum_fraction=0.5), now=0.0)
    pool.add(entry("a", 3))
    assert pool.next_deadline(5.0, enrolled=2) == 5.0


def test_take_empties_pool_and_reports_wait() -> None:
    pool = GsfsPool(GsfsServerSettings(), now=0.0)
    pool.add(entry("a", 2))
    batch = pool.take(7.0, "timeout")
    assert (batch.reason, batch.waited_s, pool.entries) == ("timeout", 5.0, {})


def test_take_on_empty_pool_raises() -> None:
    with pytest.raises(EmptyAggregationError):
        GsfsPool(GsfsServerSettings(), now=0.0).take(1.0, "timeout")


def run_periods(window: int | None) -> dict[str, int]:
    """Period 1: a×3, b×1. Period 2: a×1, c×1. Period 3: a×1 -> f_a at the third take."""
    pool = GsfsPool(GsfsServerSettings(frequency_window=window), now=0.0)
    for t, cid in enumerate("aaab"):
        pool.add(entry(cid, t))
    pool.take(10, "quorum")
    pool.add(entry("a", 11))
    pool.add(entry("c", 12))
    pool.take(20, "quorum")
    pool.add(entry("a", 21))
    return pool.take(30, "quorum").frequencies


def test_frequency_window_all_history() -> None:
    assert run_periods(None)["a"] == 5  # 3 + 1 + 1


def test_frequency_window_two_aggregations() -> None:
    assert run_periods(2)["a"] == 2  # period 2 + period 3


def test_frequency_window_one_is_current_period_only() -> None:
    assert run_periods(1) == {"a": 1}


def test_checkpoint_round_trip_rebases_times() -> None:
    s = GsfsServerSettings(max_wait_s=10, min_clients=2)
    pool = GsfsPool(s, now=90.0)
    pool.add(entry("a", 95, base=3))
    pool.add(entry("b", 96))
    back = GsfsPool.from_dict(s, pool.to_dict(now=100.0), now=1000.0)  # new monotonic clock
    assert back.next_deadline(1000.0, enrolled=10) == 1005.0


def test_checkpoint_round_trip_keeps_entries_and_frequencies() -> None:
    s = GsfsServerSettings()
    pool = GsfsPool(s, now=0.0)
    pool.add(entry("a", 1, base=3))
    pool.add(entry("a", 2, base=4))
    back = GsfsPool.from_dict(s, pool.to_dict(now=5.0), now=5.0)
    got = back.take(6.0, "quorum").updates[0]
    assert (got.base_version, got.frequency, got.tensors["w"].tolist()) == (4, 2, [2.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcd"), min_size=1, max_size=8), min_size=1, max_size=5))
def test_unwindowed_frequency_counts_every_upload(periods: list[list[str]]) -> None:
    pool = GsfsPool(GsfsServerSettings(), now=0.0)
    t = 0.0
    for uploads in periods:
        for cid in uploads:
            t += 1
            pool.add(entry(cid, t))
        batch = pool.take(t, "quorum")
    everything = [cid for uploads in periods for cid in uploads]
    assert batch.frequencies == {cid: everything.count(cid) for cid in set(everything)}
