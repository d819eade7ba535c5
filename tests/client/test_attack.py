"""The poisoned client of defence experiments: what each `[attack]` kind changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from fedllm_client.attack import AttackSettings, poison_delta, poison_labels
from fedllm_client.learner import Learner
from fedllm_proto.messages import TriggerReason

from .conftest import tiny_settings

DELTA = {"w": np.array([1.0, -2.0], np.float32)}


def _values(attack: AttackSettings) -> list[float]:
    return poison_delta(DELTA, attack)["w"].tolist()


def test_no_attack_sends_the_honest_delta() -> None:
    assert _values(AttackSettings()) == [1.0, -2.0]


def test_signflip_sends_minus_factor_times_the_delta() -> None:
    assert _values(AttackSettings(kind="signflip", factor=3.0)) == [-3.0, 6.0]


def test_scale_sends_factor_times_the_delta() -> None:
    assert _values(AttackSettings(kind="scale")) == [10.0, -20.0]


def test_labelflip_sends_its_delta_as_it_is() -> None:
    assert _values(AttackSettings(kind="labelflip")) == [1.0, -2.0]


def test_the_caller_delta_is_not_written() -> None:
    poison_delta(DELTA, AttackSettings(kind="signflip"))
    assert DELTA["w"].tolist() == [1.0, -2.0]


def test_labelflip_swaps_the_binary_classes() -> None:
    labels = np.array([0, 1, 1, 0])
    assert poison_labels(labels, 2, AttackSettings(kind="labelflip")).tolist() == [1, 0, 0, 1]


def test_labelflip_rotates_multiclass_labels() -> None:
    labels = np.array([0, 1, 2])
    assert poison_labels(labels, 3, AttackSettings(kind="labelflip")).tolist() == [1, 2, 0]


def test_other_attacks_keep_the_labels() -> None:
    labels = np.array([0, 1])
    assert poison_labels(labels, 2, AttackSettings(kind="scale")).tolist() == [0, 1]


def test_the_factor_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        AttackSettings(kind="scale", factor=0.0)


def _round_update(tmp: Path, **extra: Any) -> dict[str, np.ndarray]:
    """The update the client's learner builds for one round (synthetic trainer: same Δ)."""
    learner = Learner.open(tiny_settings(tmp, trainer="synthetic", **extra))
    learner.apply_global(0, {"a": np.zeros((3, 4), np.float32)}, gsfs=False)
    learner.train_chunk(1)
    return dict(learner.build_update(TriggerReason.ROUND, 0, None, None).update.tensors)


def test_the_learner_uploads_the_poisoned_delta(tmp_path: Path) -> None:
    honest = _round_update(tmp_path / "honest")
    flipped = _round_update(tmp_path / "flipped", attack={"kind": "signflip", "factor": 2.0})
    assert float(np.abs(honest["a"]).max()) > 0  # a zero Δ would make any attack look right
    np.testing.assert_allclose(flipped["a"], -2.0 * honest["a"], rtol=1e-6)
