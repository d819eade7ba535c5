"""The client's learning state machine with a real tiny model (no network): budget, GSFS
checks and updates, partial updates, persistence across a restart, final_eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedllm_client.learner import Learner, PendingUpload
from fedllm_client.metrics_log import read_metrics
from fedllm_proto.messages import TriggerReason

from .conftest import tiny_settings

EAGER = {"warmup_steps": 0, "min_steps_between_uploads": 0, "check_every": 5, "perf_delta": 0.0}


def _first_upload(learner: Learner) -> PendingUpload:
    for _ in range(learner.settings.max_total_steps):  # bounded: the budget ends training
        pending = learner.gsfs_chunk()
        if pending is not None:
            return pending
    raise AssertionError("no trigger fired within the budget")


def _started(tmp: Path, **extra: object) -> Learner:
    learner = Learner.open(tiny_settings(tmp, **extra))
    learner.apply_global(0, learner.model.state(), gsfs=True)
    return learner


def test_training_stops_at_the_budget(tmp_path: Path) -> None:
    learner = _started(tmp_path, max_total_steps=12)
    learner.train_chunk(10)
    learner.train_chunk(10)
    assert learner.state.steps_used == 12


def test_gsfs_update_is_delta_against_base(tmp_path: Path) -> None:
    learner = _started(tmp_path, trigger=EAGER)
    pending = _first_upload(learner)
    local = learner.model.state()
    base = learner.state.base
    assert base is not None
    expected = {k: local[k] - base[k] for k in local}
    assert all(np.allclose(pending.update.tensors[k], v) for k, v in expected.items())


def test_gsfs_update_carries_the_trigger_that_fired(tmp_path: Path) -> None:
    learner = _started(tmp_path, trigger={**EAGER, "perf_delta": 1.0, "kappa": 0.0})
    pending = _first_upload(learner)
    assert (pending.update.round, pending.update.trigger) == (-1, TriggerReason.GRADIENT_NORM)


def test_partial_update_sends_a_subset_of_layers(tmp_path: Path) -> None:
    trig = {**EAGER, "partial_updates": True, "partial_min_relative_change": 1e9}
    learner = _started(tmp_path, trigger=trig)
    learner.train_chunk(5)
    pending = learner.build_update(TriggerReason.GRADIENT_NORM, -1, None, None)
    assert len(pending.layers) == 1 < len(learner.model.layers())


def test_restart_resumes_steps_version_and_weights(tmp_path: Path) -> None:
    learner = _started(tmp_path)
    learner.train_chunk(7)
    learner.persist()
    weights = learner.model.state()
    again = Learner.open(learner.settings)
    restored = again.model.state()
    assert (again.state.steps_used, again.state.base_version) == (7, 0)
    assert all(np.array_equal(restored[k], weights[k]) for k in weights)


def test_sync_round_starts_from_the_global_model(tmp_path: Path) -> None:
    learner = _started(tmp_path)
    learner.train_chunk(3)
    learner.reset_to_base()
    base = learner.state.base
    assert base is not None
    assert all(np.array_equal(v, base[k]) for k, v in learner.model.state().items())


def test_final_eval_evaluates_last_trained_model_not_later_broadcast(tmp_path: Path) -> None:
    learner = _started(tmp_path, max_total_steps=5)
    learner.train_chunk(5)
    learner.persist()
    trained = learner.state.trained
    learner.apply_global(
        1, {k: np.zeros_like(v) for k, v in learner.model.state().items()}, gsfs=True
    )
    learner.final_eval()
    assert learner.state.trained is trained
    records = [r for r in read_metrics(learner.settings.metrics_path) if r["kind"] == "final_eval"]
    assert records and 0.0 <= records[0]["accuracy"] <= 1.0


def test_synthetic_trainer_sends_the_same_update_shaped_like_the_global_model(
    tmp_path: Path,
) -> None:
    learner = Learner.open(tiny_settings(tmp_path, trainer="synthetic"))
    theta = {"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}
    learner.apply_global(0, theta, gsfs=False)
    learner.train_chunk(1)
    first = learner.build_update(TriggerReason.ROUND, 0, None, None).update.tensors
    second = learner.build_update(TriggerReason.ROUND, 1, None, None).update.tensors
    assert {k: v.shape for k, v in first.items()} == {"a": (3, 4), "b": (5,)}
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_state_of_another_model_is_not_loaded(tmp_path: Path) -> None:
    learner = _started(tmp_path)
    learner.train_chunk(3)
    learner.persist()
    other = tiny_settings(tmp_path, model={"lora_r": 4})
    again = Learner.open(other)
    assert (again.state.steps_used, again.state.base_version) == (0, -1)


def _final_records(learner: Learner) -> list[str]:
    names = ("final_upload", "upload")
    return [r["kind"] for r in read_metrics(learner.settings.metrics_path) if r["kind"] in names]


def test_final_upload_is_recorded_only_once_it_is_sent(tmp_path: Path) -> None:
    """A final upload built and then dropped (the server's Bye came first, or the link broke)
    leaves no record; built again and sent, it is recorded once, just before its upload."""
    learner = _started(tmp_path, max_total_steps=5)
    learner.train_chunk(5)
    dropped = learner.final_upload()
    sent = learner.final_upload()
    assert dropped is not None and sent is not None
    learner.uploaded(sent, 100)
    assert (_final_records(learner), learner.final_upload()) == (["final_upload", "upload"], None)
