"""The synchronous-round state machine, driven with explicit `now`."""

from __future__ import annotations

import random

from fedllm_server.coordinator import CloseRound, Phase, RoundConfig, StartRound, SyncRounds


def _rounds(fraction: float = 1.0, min_clients: int = 2) -> SyncRounds:
    cfg = RoundConfig(fraction=fraction, min_clients=min_clients, local_steps=5, deadline_s=10.0)
    return SyncRounds(cfg, random.Random(0))


def _started(sr: SyncRounds, clients: list[str], now: float = 0.0) -> StartRound:
    for cid in clients:
        sr.connect(cid, now)
    (action,) = sr.poll(now)
    assert isinstance(action, StartRound)
    return action


def test_no_round_below_min_clients() -> None:
    sr = _rounds(min_clients=3)
    sr.connect("a", 0.0)
    sr.connect("b", 0.0)
    assert sr.poll(0.0) == []


def test_round_selects_fraction_of_connected() -> None:
    sr = _rounds(fraction=0.5, min_clients=1)
    start = _started(sr, ["a", "b", "c", "d", "e"])
    assert len(start.clients) == 3  # ceil(0.5 * 5)


def test_round_closes_complete_when_all_report() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    for cid in start.clients:
        assert sr.expects(cid, start.round)
        sr.contributed(cid)
    (close,) = sr.poll(1.0)
    assert isinstance(close, CloseRound) and close.reason == "complete"


def test_deadline_closes_with_stragglers_named() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    sr.contributed("a")
    assert sr.poll(9.9) == []
    (close,) = sr.poll(10.0)
    assert isinstance(close, CloseRound)
    assert (close.reason, close.contributed, close.stragglers) == ("deadline", ("a",), ("b",))
    assert start.round == close.round


def test_disconnect_of_last_missing_client_closes_early() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    sr.contributed("a")
    sr.disconnect("b")
    (close,) = sr.poll(1.0)
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
    sr.contributed("a")
    sr.contributed("b")
    sr.poll(1.0)
    assert (sr.phase, sr.poll(2.0)) == (Phase.AGGREGATING, [])


def test_aggregated_advances_version_and_next_round_uses_it() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    sr.contributed("a")
    sr.contributed("b")
    sr.poll(1.0)
    sr.aggregated(1)
    (nxt,) = sr.poll(2.0)
    assert isinstance(nxt, StartRound) and (nxt.round, nxt.base_version) == (1, 1)


def test_update_for_other_round_is_not_expected() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    assert not sr.expects("a", start.round + 1)


def test_second_update_from_same_client_is_not_expected() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    sr.contributed("a")
    assert not sr.expects("a", start.round)


def test_reconnecting_selected_client_gets_request_again() -> None:
    sr = _rounds()
    _started(sr, ["a", "b"])
    sr.disconnect("b")
    again = sr.connect("b", 4.0)
    assert again is not None and (again.clients, again.deadline_s) == (("b",), 6.0)


def test_resumed_round_keeps_logged_contributions() -> None:
    sr = _rounds()
    sr.resume(7, ["a"])
    start = _started(sr, ["a", "b"])
    sr.contributed("b")
    (close,) = sr.poll(1.0)
    assert isinstance(close, CloseRound)
    assert (start.round, start.clients, close.contributed) == (7, ("b",), ("a", "b"))


def test_withdrawn_contribution_can_be_made_again() -> None:
    sr = _rounds()
    start = _started(sr, ["a", "b"])
    sr.contributed("a")
    sr.withdraw("a")
    assert sr.expects("a", start.round)
