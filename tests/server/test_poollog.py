"""The pool log: records survive, a torn tail is dropped, a stale log is ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.durable.poollog import PoolLog, read_log
from fedllm_server.tensors import l2_norm


def _rec(i: int) -> AcceptedUpdate:
    tensors = {"w": np.full((2, 3), i, np.float32), "h": np.arange(4, dtype=np.float32)}
    return AcceptedUpdate(
        client_id=f"c{i}",
        update_id=f"u{i}",
        base_version=4,
        round=-1,
        sample_count=10 + i,
        trigger="performance",
        accepted_at=float(i),
        metrics={"f1_macro": 0.5},
        tensors=tensors,
        norm=l2_norm(tensors),
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


def test_a_replayed_record_carries_the_norm_the_door_gave(tmp_path: Path) -> None:
    log = PoolLog(tmp_path / "pool.log")
    log.open(4)
    log.append(_rec(3))
    log.close()
    (rec,) = read_log(tmp_path / "pool.log").records
    assert rec.norm == _rec(3).norm


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


def test_records_of_an_earlier_epoch_are_not_replayed_after_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "pool.log"
    log = PoolLog(path)
    log.open(4)
    for i in range(3):
        log.append(_rec(i))  # their bytes stay in the file: the reset rewrites only the header
    log.reset(5)
    log.append(_rec(9))  # overwrites u0 only; u1 and u2 still lie intact behind it
    log.close()
    assert [r.update_id for r in PoolLog(path).open(5).records] == ["u9"]


def test_a_file_reused_across_rounds_does_not_grow(tmp_path: Path) -> None:
    path = tmp_path / "pool.log"
    log = PoolLog(path)
    log.open(0)
    sizes = []
    for version in range(1, 4):
        log.append(_rec(0))
        log.append(_rec(1))
        sizes.append(path.stat().st_size)
        log.reset(version)
    log.close()
    assert len(set(sizes)) == 1


def test_a_corrupted_header_means_no_log_and_appends_still_work(tmp_path: Path) -> None:
    path = tmp_path / "pool.log"
    log = PoolLog(path)
    log.open(4)
    log.append(_rec(0))
    log.close()
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # inside the version field: the header's CRC no longer matches
    path.write_bytes(bytes(data))
    log = PoolLog(path)
    replay = log.open(4)
    log.append(_rec(1))
    log.close()
    assert replay.records == [] and [r.update_id for r in read_log(path).records] == ["u1"]


def test_a_flipped_payload_byte_drops_that_record_and_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "pool.log"
    log = PoolLog(path)
    log.open(4)
    log.append(_rec(0))
    size_one = path.stat().st_size
    log.append(_rec(1))
    log.close()
    data = bytearray(path.read_bytes())
    data[size_one + 40] ^= 0x01  # inside u1's payload
    path.write_bytes(bytes(data))
    replay = read_log(path)
    assert [r.update_id for r in replay.records] == ["u0"] and replay.torn_bytes > 0


def test_a_missing_file_is_created_on_open(tmp_path: Path) -> None:
    log = PoolLog(tmp_path / "pool.log")
    replay = log.open(2)
    log.append(_rec(3))
    log.close()
    assert replay.records == [] and read_log(tmp_path / "pool.log").version == 2
