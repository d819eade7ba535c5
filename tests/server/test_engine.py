"""The engine on its own: door, hold, fold, aggregate, checkpoint and replay, `now` passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedllm_proto.messages import RejectCode, TriggerReason, Update
from fedllm_server.durable.checkpoint import CheckpointStore
from fedllm_server.durable.poollog import PoolLog, read_log
from fedllm_server.engine import Engine
from fedllm_server.strategies import (
    EmptyAggregationError,
    FedAvgSettings,
    FedOptSettings,
    GsfsServerSettings,
    ValidationSettings,
)
from fedllm_server.strategies.base import Strategy
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.strategies.fedopt import FedOpt
from fedllm_server.strategies.gsfs import Gsfs
from fedllm_server.validation import Sender

FP = "fp"
INITIAL = {"w": np.zeros(2, np.float32)}
DURABLE = {"next_round": 1, "enrolled": ["a", "b"]}


def _engine(tmp_path: Path, strategy: Strategy | None = None, now: float = 0.0) -> Engine:
    engine = Engine(
        strategy or FedAvg(FedAvgSettings()),
        ValidationSettings(),
        FP,
        CheckpointStore(tmp_path / "checkpoints"),
        PoolLog(tmp_path / "pool.log"),
    )
    loaded = engine.load({k: v.copy() for k, v in INITIAL.items()}, now)
    if not loaded.from_checkpoint:
        engine.checkpoint({"next_round": 0, "enrolled": []}, now)
    engine.replay()
    return engine


def _update(uid: str, *values: float, base: int = 0, n: int = 1, rnd: int = 0) -> Update:
    w = np.array(values or (1.0, 1.0), np.float32)
    trigger = TriggerReason.ROUND if rnd >= 0 else TriggerReason.PERFORMANCE
    return Update(uid, base, rnd, n, trigger, {"f1_macro": 0.5}, {"w": w})


def _accept(engine: Engine, cid: str, update: Update, now: float = 0.0) -> Any:
    return engine.accept(Sender(cid, FP), update, now, wall=1000.0 + now)


def test_a_first_start_is_version_zero_from_the_initial_state(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    assert (engine.version, engine.global_tensors["w"].tolist()) == (0, [0.0, 0.0])


def test_the_first_checkpoint_is_durable(tmp_path: Path) -> None:
    _engine(tmp_path)
    assert CheckpointStore(tmp_path / "checkpoints").versions() == [0]


def test_an_accepted_update_is_logged_and_held(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _accept(engine, "a", _update("u1"))
    logged = [r.update_id for r in read_log(tmp_path / "pool.log").records]
    assert (logged, list(engine.held)) == (["u1"], ["u1"])


def test_the_record_is_stamped_and_measured_at_the_door(tmp_path: Path) -> None:
    verdict = _accept(_engine(tmp_path), "a", _update("u1", 3.0, 4.0), now=2.0)
    assert (verdict.update.accepted_at, verdict.update.norm) == (1002.0, 5.0)


def test_a_rejected_update_is_neither_logged_nor_held(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    verdict = _accept(engine, "a", _update("u1", base=3))
    assert (verdict.code, engine.held, read_log(tmp_path / "pool.log").records) == (
        RejectCode.FUTURE_VERSION,
        {},
        [],
    )


def test_rounds_refuse_an_update_of_an_older_version(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    engine.fold({_accept(engine, "a", _update("u1")).update.update_id: 1})
    engine.aggregate({}, DURABLE, 1.0)
    assert _accept(engine, "b", _update("u2", base=0)).code == RejectCode.TOO_STALE


def test_fold_then_aggregate_applies_the_weighted_mean(tmp_path: Path) -> None:
    # n = 1 and 3: w = 0.25·[4, 0] + 0.75·[0, 4] = [1, 3]
    engine = _engine(tmp_path)
    _accept(engine, "a", _update("u1", 4.0, 0.0, n=1))
    _accept(engine, "b", _update("u2", 0.0, 4.0, n=3))
    engine.fold({"u1": 1, "u2": 1})
    committed = engine.aggregate({}, DURABLE, 1.0)
    assert (committed.version, engine.global_tensors["w"].tolist()) == (1, [1.0, 3.0])


def test_aggregation_reports_the_door_norms(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _accept(engine, "a", _update("u1", 3.0, 4.0))
    committed = engine.aggregate({"u1": 1}, DURABLE, 1.0)
    assert committed.result.metrics.update_norms == {"a": 5.0}


def test_aggregation_counts_the_bytes_accepted_since_the_last(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _accept(engine, "a", _update("u1"))
    _accept(engine, "b", _update("u2"))
    assert engine.aggregate({"u1": 1, "u2": 1}, DURABLE, 1.0).bytes_in == 16  # 2 x 2 float32


def test_the_checkpoint_holds_the_schedule_state_and_the_door(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _accept(engine, "a", _update("u1"))
    engine.aggregate({"u1": 1}, DURABLE, 1.0)
    meta = CheckpointStore(tmp_path / "checkpoints").load(1).strategy_meta
    assert (sorted(meta), meta["next_round"], meta["strategy"]) == (
        ["door", "enrolled", "next_round", "strategy"],
        1,
        "fedavg",
    )


def test_aggregation_resets_the_log(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _accept(engine, "a", _update("u1"))
    engine.aggregate({"u1": 1}, DURABLE, 1.0)
    replay = read_log(tmp_path / "pool.log")
    assert (replay.version, replay.records) == (1, [])


def test_an_update_held_past_an_aggregation_is_logged_again(tmp_path: Path) -> None:
    engine = _engine(tmp_path, Gsfs(GsfsServerSettings()))
    _accept(engine, "a", _update("u1", rnd=-1))
    _accept(engine, "b", _update("u2", rnd=-1))  # accepted, not yet in the schedule's view
    engine.aggregate({"u1": 1}, {"enrolled": []}, 1.0)
    logged = [r.update_id for r in read_log(tmp_path / "pool.log").records]
    assert (list(engine.held), logged) == (["u2"], ["u2"])


def test_dropped_updates_are_forgotten(tmp_path: Path) -> None:
    engine = _engine(tmp_path, Gsfs(GsfsServerSettings()))
    _accept(engine, "a", _update("u1", rnd=-1))
    engine.drop(["u1", "never-seen"])
    assert engine.held == {}


def test_gsfs_weighs_by_the_frequencies_it_is_given(tmp_path: Path) -> None:
    # f = 3 and 1: w = 0.75·[4, 0] + 0.25·[0, 4] = [3, 1]
    engine = _engine(tmp_path, Gsfs(GsfsServerSettings()))
    _accept(engine, "a", _update("u1", 4.0, 0.0, rnd=-1))
    _accept(engine, "b", _update("u2", 0.0, 4.0, rnd=-1))
    engine.aggregate({"u1": 3, "u2": 1}, {"enrolled": []}, 1.0)
    assert engine.global_tensors["w"].tolist() == [3.0, 1.0]


def test_gsfs_accepts_a_lagging_update(tmp_path: Path) -> None:
    engine = _engine(tmp_path, Gsfs(GsfsServerSettings()))
    _accept(engine, "a", _update("u1", rnd=-1))
    engine.aggregate({"u1": 1}, {"enrolled": []}, 1.0)
    assert _accept(engine, "b", _update("u2", base=0, rnd=-1)).accepted


def test_an_empty_aggregation_raises_and_keeps_the_version(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with pytest.raises(EmptyAggregationError):
        engine.aggregate({}, DURABLE, 1.0)
    assert engine.version == 0


def test_a_restart_replays_what_was_accepted_since_the_checkpoint(tmp_path: Path) -> None:
    first = _engine(tmp_path)
    _accept(first, "a", _update("u1"))
    first.close()
    again = _engine(tmp_path, now=50.0)
    assert list(again.held) == ["u1"]


def test_a_restart_still_refuses_a_replayed_id(tmp_path: Path) -> None:
    first = _engine(tmp_path)
    _accept(first, "a", _update("u1"))
    first.aggregate({"u1": 1}, DURABLE, 1.0)
    first.close()
    again = _engine(tmp_path, now=50.0)
    assert _accept(again, "a", _update("u1", base=1), now=50.0).code == RejectCode.REPLAY


def test_a_restart_resumes_the_fedopt_state(tmp_path: Path) -> None:
    first = _engine(tmp_path, FedOpt(FedOptSettings()))
    _accept(first, "a", _update("u1"))
    first.aggregate({"u1": 1}, DURABLE, 1.0)
    first.close()
    again = _engine(tmp_path, FedOpt(FedOptSettings()), now=50.0)
    assert (again.version, again.strategy_state.step) == (1, 1)
