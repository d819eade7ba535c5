"""SyncRounds, the synchronous schedule, driven with explicit `now`."""

from __future__ import annotations

import random

from fedserver_testkit import accepted

from fedllm_server.schedule import Aggregate, CloseRound, Fold, RoundConfig, StartRound
from fedllm_server.schedule.base import ScheduleContext
from fedllm_server.schedule.rounds import Phase, SyncRounds

CONFIG = RoundConfig(fraction=1.0, min_clients=2, local_steps=5, deadline_s=10.0)


def _rounds(fraction: float = 1.0, min_clients: int = 2) -> SyncRounds:
    cfg = RoundConfig(fraction=fraction, min_clients=min_clients, local_steps=5, deadline_s=10.0)
    return SyncRounds(cfg, random.Random(0))


def _started(sr: SyncRounds, clients: list[str], now: float = 0.0) -> StartRound:
    for cid in clients:
        sr.joined(cid, now)
    (action,) = sr.poll(now)
    assert isinstance(action, StartRound)
    return action


def _contribute(sr: SyncRounds, cid: str, rnd: int = 0, now: float = 0.0) -> list[object]:
    assert sr.expects(cid, rnd)
    return list(sr.accepted(accepted(cid, f"{cid}-{rnd}", round=rnd), now))


def test_no_round_below_min_clients() -> None:
    sr = _rounds(min_clients=3)
    sr.joined("a", 0.0)
    sr.joined("b", 0.0)
    assert sr.poll(0.0) == []


def test_round_selects_fraction_of_connected() -> None:
    sr = _rounds(fraction=0.5, min_clients=1)
    start = _started(sr, ["a", "b", "c", "d", "e"])
    assert len(start.clients) == 3  # ceil(0.5 * 5)


def test_an_accepted_update_is_folded_at_once() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    assert _contribute(sr, "a") == [Fold({"a-0": 1})]


def test_round_closes_complete_when_all_report() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    for cid in start.clients:
        _contribute(sr, cid, start.round)
    close, _ = sr.poll(1.0)
    assert isinstance(close, CloseRound) and close.reason == "complete"


def test_a_closed_round_asks_for_its_aggregation_with_the_round_duration() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"], now=2.0)
    _contribute(sr, "a")
    _contribute(sr, "b")
    _, agg = sr.poll(5.0)
    assert isinstance(agg, Aggregate) and (agg.reason, agg.waited_s, agg.fold) == (
        "complete",
        3.0,
        {},
    )


def test_aggregation_carries_the_next_round_for_the_checkpoint() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    _contribute(sr, "a")
    _contribute(sr, "b")
    _, agg = sr.poll(1.0)
    assert isinstance(agg, Aggregate) and agg.durable == {"next_round": 1, "enrolled": ["a", "b"]}


def test_deadline_closes_with_stragglers_named() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    _contribute(sr, "a")
    assert sr.poll(9.9) == []
    close, _ = sr.poll(10.0)
    assert isinstance(close, CloseRound)
    assert (close.reason, close.contributed, close.stragglers) == ("deadline", ("a",), ("b",))
    assert start.round == close.round


def test_no_close_while_an_update_is_at_the_door() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    _contribute(sr, "a")
    assert sr.expects("b", 0)  # b's update is being judged past the deadline
    assert sr.poll(10.0) == []


def test_the_verdict_then_decides_the_close() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    _contribute(sr, "a")
    assert sr.expects("b", 0)
    sr.accepted(accepted("b", "b-0", round=0), 10.5)
    close, _ = sr.poll(10.5)
    assert isinstance(close, CloseRound) and (close.reason, close.contributed) == (
        "complete",
        ("a", "b"),
    )


def test_no_deadline_to_wait_for_while_an_update_is_at_the_door() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    assert sr.expects("a", 0)
    assert sr.next_deadline(1.0) is None


def test_next_deadline_is_the_running_rounds() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"], now=3.0)
    assert sr.next_deadline(4.0) == 13.0


def test_disconnect_of_last_missing_client_closes_early() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    _contribute(sr, "a")
    sr.left("b")
    close, _ = sr.poll(1.0)
    assert isinstance(close, CloseRound)
    assert (close.reason, close.dropouts) == ("dropouts", ("b",))


def test_empty_round_is_abandoned_and_next_starts() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    (close,) = sr.poll(10.0)
    assert isinstance(close, CloseRound) and close.contributed == ()
    (nxt,) = sr.poll(10.0)
    assert isinstance(nxt, StartRound) and nxt.round == 1


def test_no_new_round_while_aggregating() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    _contribute(sr, "a")
    _contribute(sr, "b")
    sr.poll(1.0)
    assert (sr.phase, sr.poll(2.0)) == (Phase.AGGREGATING, [])


def test_next_round_starts_once_aggregated() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    _contribute(sr, "a")
    _contribute(sr, "b")
    sr.poll(1.0)
    sr.aggregated(1.5)
    (nxt,) = sr.poll(2.0)
    assert isinstance(nxt, StartRound) and nxt.round == 1


def test_update_for_other_round_is_not_expected() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    assert not sr.expects("a", start.round + 1)


def test_second_update_from_same_client_is_not_expected() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    _contribute(sr, "a")
    assert not sr.expects("a", start.round)


def test_an_update_at_the_door_is_not_expected_twice() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    assert sr.expects("a", start.round)
    assert not sr.expects("a", start.round)


def test_reconnecting_selected_client_gets_request_again() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    sr.left("b")
    (again,) = sr.joined("b", 4.0)
    assert isinstance(again, StartRound) and (again.clients, again.deadline_s) == (("b",), 6.0)


def test_replayed_updates_resume_their_round_and_are_folded() -> None:
    sr = _rounds()
    actions = sr.replayed([accepted("a", "a-7", round=7)], 0.0)
    start = _started(sr, ["a", "b"])
    _contribute(sr, "b", 7)
    close, _ = sr.poll(1.0)
    assert isinstance(close, CloseRound)
    assert (actions, start.round, start.clients, close.contributed) == (
        [Fold({"a-7": 1})],
        7,
        ("b",),
        ("a", "b"),
    )


def test_refused_contribution_can_be_made_again() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    assert sr.expects("a", start.round)
    sr.refused("a")
    assert sr.expects("a", start.round)


def test_restore_takes_next_round_and_enrolment_from_the_checkpoint() -> None:
    meta = {"next_round": 4, "enrolled": ["a", "z"]}
    sr = SyncRounds.restore(ScheduleContext(CONFIG, 0, 8, 3, meta, 0.0))
    assert (sr.next_round, sr.snapshot(0.0)["enrolled"]) == (4, ["a", "z"])
