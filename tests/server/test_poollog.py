"""The pool log: records survive, a torn tail is dropped, a stale log is ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedllm_server.poollog import LoggedUpdate, PoolLog, read_log


def _rec(i: int) -> LoggedUpdate:
    return LoggedUpdate(
        client_id=f"c{i}",
        update_id=f"u{i}",
        base_version=4,
        round=-1,
        sample_count=10 + i,
        trigger="performance",
        accepted_at=float(i),
        metrics={"f1_macro": 0.5},
        tensors={"w": np.full((2, 3), i, np.float32), "h": np.arange(4, dtype=np.float32)},
    )


def test_appended_records_replay_in_order(tmp_path: Path) -> None:
    log = PoolLog(tmp_path / "pool.log")
    log.open(4)
    for i in range(3):
        log.append(_rec(i))
    log.close()
    replay = PoolLog(tmp_path / "pool.log").open(4)
    assert [r.update_id for r in replay.records] == ["u0", "u1", "u2"]


def test_replayed_tensors_are_identical(tmp_path: Path) -> None:
    log = PoolLog(tmp_path / "pool.log")
    log.open(4)
    log.append(_rec(7))
    log.close()
    (rec,) = read_log(tmp_path / "pool.log").records
    np.testing.assert_array_equal(rec.tensors["w"], _rec(7).tensors["w"])


def test_torn_tail_is_dropped_and_appends_continue(tmp_path: Path) -> None:
    path = tmp_path / "pool.log"
    log = PoolLog(path)
    log.open(4)
    log.append(_rec(0))
    log.append(_rec(1))
    log.close()
    path.write_bytes(path.read_bytes()[:-5])  # the writer died mid-append
    log = PoolLog(path)
    replay = log.open(4)
    log.append(_rec(2))
    log.close()
    assert replay.torn_bytes > 0
    assert [r.update_id for r in read_log(path).records] == ["u0", "u2"]


def test_log_of_an_older_version_is_not_replayed(tmp_path: Path) -> None:
    log = PoolLog(tmp_path / "pool.log")
    log.open(4)
    log.append(_rec(0))
    log.close()
    replay = PoolLog(tmp_path / "pool.log").open(5)
    assert replay.records == []


def test_reset_empties_the_log(tmp_path: Path) -> None:
    log = PoolLog(tmp_path / "pool.log")
    log.open(4)
    log.append(_rec(0))
    log.reset(5)
    log.close()
    replay = read_log(tmp_path / "pool.log")
    assert (replay.version, replay.records) == (5, [])
