"""The client's learning state machine with a real tiny model (no network): budget, GSFS
checks and updates, partial updates, persistence across a restart, final_eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedllm_client.metrics_log import read_metrics
from fedllm_client.runtime import ClientRuntime, PendingUpload
from fedllm_proto.messages import TriggerReason

from .conftest import tiny_settings

EAGER = {"warmup_steps": 0, "min_steps_between_uploads": 0, "check_every": 5, "perf_delta": 0.0}


def _first_upload(rt: ClientRuntime) -> PendingUpload:
    for _ in range(rt.settings.max_total_steps):  # bounded: the budget ends training
        pending = rt.gsfs_chunk()
        if pending is not None:
            return pending
    raise AssertionError("no trigger fired within the budget")


def _started(tmp: Path, **extra: object) -> ClientRuntime:
    rt = ClientRuntime.open(tiny_settings(tmp, **extra))
    rt.apply_global(0, rt.model.state(), gsfs=True)
    return rt


def test_training_stops_at_the_budget(tmp_path: Path) -> None:
    rt = _started(tmp_path, max_total_steps=12)
    rt.train_chunk(10)
    rt.train_chunk(10)
    assert rt.state.steps_used == 12


def test_gsfs_update_is_delta_against_base(tmp_path: Path) -> None:
    rt = _started(tmp_path, trigger=EAGER)
    pending = _first_upload(rt)
    local = rt.model.state()
    base = rt.state.base
    assert base is not None
    expected = {k: local[k] - base[k] for k in local}
    assert all(np.allclose(pending.update.tensors[k], v) for k, v in expected.items())


def test_gsfs_update_carries_the_trigger_that_fired(tmp_path: Path) -> None:
    rt = _started(tmp_path, trigger={**EAGER, "perf_delta": 1.0, "kappa": 0.0})
    pending = _first_upload(rt)
    assert (pending.update.round, pending.update.trigger) == (-1, TriggerReason.GRADIENT_NORM)


def test_partial_update_sends_a_subset_of_layers(tmp_path: Path) -> None:
    trig = {**EAGER, "partial_updates": True, "partial_min_relative_change": 1e9}
    rt = _started(tmp_path, trigger=trig)
    rt.train_chunk(5)
    pending = rt.build_update(TriggerReason.GRADIENT_NORM, -1, None, None)
    assert len(pending.layers) == 1 < len(rt.model.layers())


def test_restart_resumes_steps_version_and_weights(tmp_path: Path) -> None:
    rt = _started(tmp_path)
    rt.train_chunk(7)
    rt.persist()
    weights = rt.model.state()
    again = ClientRuntime.open(rt.settings)
    restored = again.model.state()
    assert (again.state.steps_used, again.state.base_version) == (7, 0)
    assert all(np.array_equal(restored[k], weights[k]) for k in weights)


def test_sync_round_starts_from_the_global_model(tmp_path: Path) -> None:
    rt = _started(tmp_path)
    rt.train_chunk(3)
    rt.reset_to_base()
    base = rt.state.base
    assert base is not None
    assert all(np.array_equal(v, base[k]) for k, v in rt.model.state().items())


def test_final_eval_evaluates_last_trained_model_not_later_broadcast(tmp_path: Path) -> None:
    rt = _started(tmp_path, max_total_steps=5)
    rt.train_chunk(5)
    rt.persist()
    trained = rt.state.trained
    rt.apply_global(1, {k: np.zeros_like(v) for k, v in rt.model.state().items()}, gsfs=True)
    rt.final_eval()
    assert rt.state.trained is trained
    records = [r for r in read_metrics(rt.settings.metrics_path) if r["event"] == "final_eval"]
    assert records and 0.0 <= records[0]["accuracy"] <= 1.0


def test_synthetic_trainer_sends_the_same_update_shaped_like_the_global_model(
    tmp_path: Path,
) -> None:
    rt = ClientRuntime.open(tiny_settings(tmp_path, trainer="synthetic"))
    theta = {"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}
    rt.apply_global(0, theta, gsfs=False)
    rt.train_chunk(1)
    first = rt.build_update(TriggerReason.ROUND, 0, None, None).update.tensors
    second = rt.build_update(TriggerReason.ROUND, 1, None, None).update.tensors
    assert {k: v.shape for k, v in first.items()} == {"a": (3, 4), "b": (5,)}
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_state_of_another_model_is_not_loaded(tmp_path: Path) -> None:
    rt = _started(tmp_path)
    rt.train_chunk(3)
    rt.persist()
    other = tiny_settings(tmp_path, model={"lora_r": 4})
    again = ClientRuntime.open(other)
    assert (again.state.steps_used, again.state.base_version) == (0, -1)


def _final_records(rt: ClientRuntime) -> list[str]:
    names = ("final_upload", "upload")
    return [r["event"] for r in read_metrics(rt.settings.metrics_path) if r["event"] in names]


def test_final_upload_is_recorded_only_once_it_is_sent(tmp_path: Path) -> None:
    """A final upload built and then dropped (the server's Bye came first, or the link broke)
    leaves no record; built again and sent, it is recorded once, just before its upload."""
    rt = _started(tmp_path, max_total_steps=5)
    rt.train_chunk(5)
    dropped = rt.final_upload()
    sent = rt.final_upload()
    assert dropped is not None and sent is not None
    rt.uploaded(sent, 100)
    assert (_final_records(rt), rt.final_upload()) == (["final_upload", "upload"], None)
