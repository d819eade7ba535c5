"""Atomic client state: round trips, unchanged blobs kept, damage detected, crash leaves old."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedllm_client.state import MANIFEST, ClientState, StateError, StateStore


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a.lora_A.weight": rng.standard_normal((4, 3), dtype=np.float32),
        "head": rng.random(2).astype(np.float32),
    }


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state = ClientState(
        base_version=3, steps_used=17, trigger={"m_ref": 0.5}, local=_tensors(1), base=_tensors(2)
    )
    StateStore(tmp_path).save(state)
    loaded = StateStore(tmp_path).load()
    assert loaded is not None
    assert (loaded.base_version, loaded.steps_used, loaded.trigger) == (3, 17, {"m_ref": 0.5})
    assert all(np.array_equal(loaded.local[k], v) for k, v in state.local.items())  # type: ignore[index, union-attr]


def test_no_state_loads_as_none(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "absent").load() is None


def test_unchanged_base_is_not_rewritten(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = ClientState(local=_tensors(1), base=_tensors(2))
    store.save(state)
    first = sorted(p.name for p in tmp_path.glob("base.*"))
    state.local = _tensors(3)
    store.save(state)
    assert sorted(p.name for p in tmp_path.glob("base.*")) == first


def test_old_generations_are_removed(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = ClientState(local=_tensors(1))
    for seed in range(3):
        state.local = _tensors(seed)
        store.save(state)
    assert len(list(tmp_path.glob("local.*"))) == 1


def test_corrupted_blob_is_detected(tmp_path: Path) -> None:
    StateStore(tmp_path).save(ClientState(local=_tensors(1)))
    blob = next(tmp_path.glob("local.*"))
    blob.write_bytes(blob.read_bytes()[:-7])  # truncated
    with pytest.raises(StateError, match="checksum"):
        StateStore(tmp_path).load()


def test_crash_before_manifest_keeps_previous_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(ClientState(steps_used=5, local=_tensors(1)))
    (tmp_path / "local.9.safetensors").write_bytes(b"half a write")  # a save that died here
    loaded = StateStore(tmp_path).load()
    assert loaded is not None and loaded.steps_used == 5


def test_counters_only_mode_writes_no_tensors(tmp_path: Path) -> None:
    StateStore(tmp_path).save(ClientState(steps_used=2, local=_tensors(1)), with_tensors=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]
