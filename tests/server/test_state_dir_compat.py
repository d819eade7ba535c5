"""A state_dir written by the server before the engine/schedule split restores unchanged.

The fixtures under fixtures/state-before-issue9 were written by the server of commit b7101a1
(its Engine driven directly, 2-tensor model):
- gsfs: N = 3 (explicit), quorum 1.0; a1, b1, c1 aggregated into version 1; then a2, a3 (a
  resubmits) and b2 accepted into the pool (in the pool log, not aggregated).
- fedopt: round 0 (a, b) aggregated into version 1 (one optimizer step); round 1 holds a's
  logged contribution a-r1.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fedllm_server.durable.checkpoint import CheckpointStore
from fedllm_server.durable.poollog import PoolLog
from fedllm_server.engine import Engine
from fedllm_server.schedule import Drop, Fold, RoundConfig, ScheduleContext
from fedllm_server.strategies import FedOptSettings, GsfsServerSettings, ValidationSettings
from fedllm_server.strategies.base import Strategy
from fedllm_server.strategies.fedopt import FedOpt
from fedllm_server.strategies.gsfs import Gsfs

FIXTURES = Path(__file__).parent / "fixtures" / "state-before-issue9"
INITIAL = {"w": np.zeros(2, np.float32), "h": np.zeros(3, np.float32)}
ROUNDS = RoundConfig(1.0, 2, 1, 5.0)


def _restore(tmp_path: Path, name: str, strategy: Strategy) -> tuple[Engine, Any]:
    """What the daemon's start-up does, without the event loop."""
    state = tmp_path / name
    shutil.copytree(FIXTURES / name, state)
    engine = Engine(
        strategy,
        ValidationSettings(),
        "fp",
        CheckpointStore(state / "checkpoints"),
        PoolLog(state / "pool.log"),
    )
    loaded = engine.load(INITIAL, 100.0)
    ctx = ScheduleContext(ROUNDS, 0, 8, loaded.version, loaded.meta, 100.0)
    schedule = strategy.make_schedule(ctx)
    for action in schedule.replayed(engine.replay().updates, 100.0):
        if isinstance(action, Fold):
            engine.fold(action.weights)
        else:
            assert isinstance(action, Drop)
            engine.drop(action.update_ids)
    return engine, schedule


def _gsfs() -> Gsfs:
    s = GsfsServerSettings(  # frequency_cap 0: the stored raw counts read back as they are
        quorum_fraction=1.0, federation_size_source="explicit", federation_size=3, frequency_cap=0
    )
    return Gsfs(s)


def test_gsfs_resumes_its_version(tmp_path: Path) -> None:
    engine, _ = _restore(tmp_path, "gsfs", _gsfs())
    assert engine.version == 1


def test_gsfs_pool_comes_back_one_entry_per_client(tmp_path: Path) -> None:
    engine, schedule = _restore(tmp_path, "gsfs", _gsfs())
    assert (schedule.entries, sorted(engine.held)) == ({"a": "a3", "b": "b2"}, ["a3", "b2"])


def test_gsfs_frequencies_and_enrolment_come_back(tmp_path: Path) -> None:
    _, schedule = _restore(tmp_path, "gsfs", _gsfs())
    assert (schedule.frequencies(), sorted(schedule.enrolled)) == (
        {"a": 3, "b": 2, "c": 1},
        ["a", "b", "c"],
    )


def test_gsfs_replay_protection_comes_back(tmp_path: Path) -> None:
    engine, _ = _restore(tmp_path, "gsfs", _gsfs())
    assert {"a1", "a2", "a3"} <= set(engine.door.seen["a"])


def test_fedopt_resumes_its_optimizer_state(tmp_path: Path) -> None:
    engine, _ = _restore(tmp_path, "fedopt", FedOpt(FedOptSettings()))
    assert (engine.version, engine.strategy_state.step, sorted(engine.strategy_state.m)) == (
        1,
        1,
        ["h", "w"],
    )


def test_fedopt_resumes_the_round_with_its_logged_contribution(tmp_path: Path) -> None:
    engine, schedule = _restore(tmp_path, "fedopt", FedOpt(FedOptSettings()))
    schedule.joined("b", 100.0)
    (start,) = schedule.poll(100.0)
    assert (start.round, start.clients, engine.acc.clients, engine.held) == (1, ("b",), ["a"], {})
