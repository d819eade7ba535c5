"""Hybrid edge-cloud distillation (`[distill]`): the KD loss, the distiller, the teacher cache,
the engine hook and the settings, on tiny randomly initialised models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fedserver_testkit import TINY_DATA, TINY_MODEL

from fedllm_core.data import DataSettings, prepare_data
from fedllm_core.errors import SettingsError
from fedllm_core.model import build_model, trainable_state
from fedllm_core.model_settings import ModelSettings
from fedllm_core.prompts import get_template, render
from fedllm_core.settings import load_settings
from fedllm_core.training import encode_split, predict_logits
from fedllm_proto.messages import TriggerReason, Update
from fedllm_server.distill.distiller import Distiller
from fedllm_server.distill.hook import Refined
from fedllm_server.distill.kd import agreement, kd_loss
from fedllm_server.distill.settings import DistillSettings
from fedllm_server.distill.teacher import open_teacher
from fedllm_server.distill.transfer import TeacherData, split_rows, teacher_data, transfer_set
from fedllm_server.durable.checkpoint import CheckpointStore
from fedllm_server.durable.poollog import PoolLog
from fedllm_server.engine import Engine
from fedllm_server.settings import ENV_PREFIX, ServerSettings
from fedllm_server.strategies import FedAvgSettings, ValidationSettings
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.tensors import TensorDict
from fedllm_server.validation import Sender

LABELS = ("Benign", "Malicious")
TEACHER_MODEL = {**TINY_MODEL, "lora_r": 4, "max_length": 128}
TEXTS = [f"tcp http SF port {i % 7} bytes {i % 5} packets {i}" for i in range(48)]


def _distill(**extra: Any) -> DistillSettings:
    cfg = {"enabled": True, "model": TEACHER_MODEL, "teacher_steps": 3, "transfer_max": 40}
    return DistillSettings.model_validate({**cfg, **extra})


# ---------------------------------------------------------------------------- the KD loss


def test_kd_loss_at_temperature_one_is_the_kl_divergence() -> None:
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(kd_loss(student, teacher, 1.0)) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_softens_both_sides_and_scales_by_t_squared() -> None:
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    p = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)  # softmax([ln 3 / 2, 0])[0]
    expected = 4.0 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert float(kd_loss(student, teacher, 2.0)) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_the_batch_mean() -> None:
    student = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 1.0]])  # the second row agrees: 0
    one = float(kd_loss(student[:1], teacher[:1], 1.0))
    assert float(kd_loss(student, teacher, 1.0)) == pytest.approx(one / 2, rel=1e-6)


def test_kd_loss_of_identical_logits_is_zero() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    assert float(kd_loss(logits, logits.clone(), 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_agreement_counts_equal_top_classes() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    b = np.array([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert agreement(a, b) == 0.5


# ---------------------------------------------------------------------------- the distiller


@pytest.fixture(scope="module")
def distiller() -> Distiller:
    """A tiny student and teacher targets that disagree with it on every transfer flow."""
    student = build_model(ModelSettings.model_validate(TINY_MODEL), LABELS, seed=0)
    split = encode_split(student.tokenizer, TEXTS, None, 32)
    start = predict_logits(student, split)
    targets = np.where(np.eye(2)[start.argmax(axis=1)] > 0, -2.0, 2.0).astype(np.float32)
    settings = _distill(steps=30, lr=1e-2, batch_size=16, temperature=1.0)
    return Distiller(settings, student, split, targets)


@pytest.fixture(scope="module")
def initial(distiller: Distiller) -> TensorDict:
    return trainable_state(distiller.student.model)


def test_distillation_moves_the_student_toward_the_teacher(
    distiller: Distiller, initial: TensorDict
) -> None:
    report = distiller.distil(initial, 1).report
    assert (report["kd_loss_after"] < report["kd_loss_before"]) and (
        report["agreement_after"] > report["agreement_before"]
    )


def test_distillation_is_deterministic_given_the_state_and_version(
    distiller: Distiller, initial: TensorDict
) -> None:
    first, second = distiller.distil(initial, 3).tensors, distiller.distil(initial, 3).tensors
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_distillation_leaves_the_state_it_was_given_alone(
    distiller: Distiller, initial: TensorDict
) -> None:
    before = {k: v.copy() for k, v in initial.items()}
    distiller.distil(initial, 1)
    assert all(np.array_equal(before[k], initial[k]) for k in before)


def test_the_cadence_skips_versions_between(distiller: Distiller, initial: TensorDict) -> None:
    every_other = Distiller(
        _distill(every_versions=2, steps=1),
        distiller.student,
        distiller.transfer,
        distiller.teacher_logits,
    )
    assert (every_other.refine(initial, 1), every_other.refine(initial, 2) is not None) == (
        None,
        True,
    )


# ---------------------------------------------------------------------------- the teacher


def _teacher_rows() -> TeacherData:
    verbose = get_template("verbose@1")
    data = DataSettings.model_validate(TINY_DATA)
    prepared = prepare_data(data)
    rows = prepared.splits.val[:40]
    return TeacherData(render(verbose, prepared.flows, rows), prepared.labels[rows], LABELS)


def test_a_restart_reuses_the_cached_teacher(tmp_path: Path) -> None:
    rows = _teacher_rows()
    first, _ = open_teacher(_distill(), rows, tmp_path)
    second, report = open_teacher(_distill(), rows, tmp_path)
    same = trainable_state(first.bundle.model), trainable_state(second.bundle.model)
    assert report.source == "cache" and all(np.array_equal(same[0][k], same[1][k]) for k in same[0])


def test_a_changed_setting_trains_a_new_teacher_and_drops_the_old(tmp_path: Path) -> None:
    rows = _teacher_rows()
    open_teacher(_distill(), rows, tmp_path)
    _, report = open_teacher(_distill(teacher_steps=4), rows, tmp_path)
    cached = list(tmp_path.glob("teacher-*.safetensors"))
    assert (report.source, [p.name for p in cached]) == (
        "trained",
        [f"teacher-{report.key[:32]}.safetensors"],
    )


def test_changed_data_trains_a_new_teacher(tmp_path: Path) -> None:
    rows = _teacher_rows()
    open_teacher(_distill(), rows, tmp_path)
    fewer = TeacherData(rows.texts[:-1], rows.labels[:-1], rows.label_names)
    assert open_teacher(_distill(), fewer, tmp_path)[1].source == "trained"


def test_an_unreadable_cache_is_trained_again(tmp_path: Path) -> None:
    rows = _teacher_rows()
    _, first = open_teacher(_distill(), rows, tmp_path)
    (tmp_path / f"teacher-{first.key[:32]}.safetensors").write_bytes(b"torn")
    assert open_teacher(_distill(), rows, tmp_path)[1].source == "trained"


# ---------------------------------------------------------------------------- what the cloud sees


@pytest.mark.parametrize("rows", ["validation", "train", "train_and_validation"])
def test_no_row_choice_touches_the_test_split(rows: Any) -> None:
    prepared = prepare_data(DataSettings.model_validate({**TINY_DATA, "split": "capture"}))
    assert not np.intersect1d(split_rows(prepared, rows), prepared.splits.test).size


def test_the_teacher_trains_on_the_validation_rows_by_default() -> None:
    data = DataSettings.model_validate(TINY_DATA)
    assert len(teacher_data(data, _distill()).texts) == len(prepare_data(data).splits.val)


def test_transfer_items_pair_both_templates_of_one_flow() -> None:
    data = DataSettings.model_validate(TINY_DATA)
    prepared = prepare_data(data)
    rows = split_rows(prepared, "train_and_validation")
    known = set(
        zip(
            render("compact", prepared.flows, rows),
            render("verbose@1", prepared.flows, rows),
            strict=True,
        )
    )
    pairs = transfer_set(data, _distill())
    found = set(zip(pairs.student_texts, pairs.teacher_texts, strict=True))
    assert (len(pairs), found <= known) == (40, True)


# ---------------------------------------------------------------------------- the engine hook


class _AddOne:
    """A refiner that adds 1 everywhere (the engine's side of the hook, without torch)."""

    def refine(self, tensors: TensorDict, version: int) -> Refined:
        return Refined({k: v + 1 for k, v in tensors.items()}, {"steps": version})


def _engine(tmp_path: Path, refiner: Any) -> Engine:
    engine = Engine(
        FedAvg(FedAvgSettings()),
        ValidationSettings(),
        "fp",
        CheckpointStore(tmp_path / "checkpoints"),
        PoolLog(tmp_path / "pool.log"),
        refiner=refiner,
    )
    engine.load({"w": np.zeros(2, np.float32)}, 0.0)
    engine.checkpoint({"next_round": 0, "enrolled": []}, 0.0)
    engine.replay()
    update = Update("u", 0, 0, 1, TriggerReason.ROUND, {}, {"w": np.ones(2, np.float32)})
    engine.accept(Sender("a", "fp"), update, 0.0, 1000.0)
    return engine


@pytest.mark.parametrize(("refiner", "expected"), [(None, 1.0), (_AddOne(), 2.0)])
def test_the_engine_publishes_and_checkpoints_the_refined_model(
    tmp_path: Path, refiner: Any, expected: float
) -> None:
    engine = _engine(tmp_path, refiner)
    committed = engine.aggregate({"u": 1}, {"next_round": 1, "enrolled": ["a"]}, 0.0)
    saved = CheckpointStore(tmp_path / "checkpoints").load_latest().checkpoint
    assert saved is not None
    assert (committed.result.global_tensors["w"].tolist(), saved.global_state["w"].tolist()) == (
        [expected] * 2,
        [expected] * 2,
    )


def test_without_a_refiner_the_commit_has_no_distill_report(tmp_path: Path) -> None:
    engine = _engine(tmp_path, None)
    assert engine.aggregate({"u": 1}, {"next_round": 1, "enrolled": ["a"]}, 0.0).distill is None


# ---------------------------------------------------------------------------- settings


def test_distillation_is_off_by_default() -> None:
    assert ServerSettings.model_validate({"insecure": True}).distill.enabled is False


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("teacher_rows", "test", "distill.teacher_rows"),
        ("template", "wordy", "distill.template"),
        ("temperature", 0, "distill.temperature"),
        ("model", {"max_length": 64}, "max_length 64 is shorter"),
        ("every_versions", 0, "distill.every_versions"),
    ],
)
def test_a_bad_distill_setting_names_the_field(field: str, value: Any, says: str) -> None:
    overrides = {"insecure": True, "distill": {field: value}}
    with pytest.raises(SettingsError, match=says):
        load_settings(ServerSettings, None, env_prefix=ENV_PREFIX, environ={}, overrides=overrides)
