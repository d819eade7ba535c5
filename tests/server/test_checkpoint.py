"""Checkpoint generations: round trip, corruption falls back, pruning keeps two."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedllm_server.durable.checkpoint import Checkpoint, CheckpointStore


def _ckpt(version: int) -> Checkpoint:
    rng = np.random.default_rng(version)
    return Checkpoint(
        version=version,
        global_state={"a": rng.standard_normal((3, 4)).astype(np.float32)},
        strategy_arrays={"m.a": np.full((3, 4), version, np.float32)},
        strategy_meta={"frequencies": {"c1": version}},
        metrics={"accuracy": 0.5},
    )


def test_round_trip_keeps_tensors_and_meta(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_ckpt(3))
    loaded = store.load_latest().checkpoint
    assert loaded is not None
    np.testing.assert_array_equal(loaded.global_state["a"], _ckpt(3).global_state["a"])
    assert (loaded.version, loaded.strategy_meta) == (3, {"frequencies": {"c1": 3}})


def test_truncated_latest_falls_back_to_previous(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_ckpt(1))
    store.save(_ckpt(2))
    newest = tmp_path / "global-00000002.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])
    result = store.load_latest()
    assert result.checkpoint is not None
    assert (result.checkpoint.version, [v for v, _ in result.skipped]) == (1, [2])


def test_flipped_byte_in_manifest_is_detected(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_ckpt(1))
    store.save(_ckpt(2))
    manifest = tmp_path / "checkpoint-00000002.json"
    manifest.write_text(manifest.read_text().replace('"version": 2', '"version": 9'))
    result = store.load_latest()
    assert result.checkpoint is not None and result.checkpoint.version == 1


def test_only_two_generations_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for version in range(1, 5):
        store.save(_ckpt(version))
    assert store.versions() == [4, 3]


def test_empty_directory_has_no_checkpoint(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path).load_latest().checkpoint is None
