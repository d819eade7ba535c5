"""Reference detectors do what their names say, on the shipped flows."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedllm_core.data import DataSettings, prepare_data, template_for
from fedllm_experiment.references import REFERENCES, ReferenceInputs, reference_reports

DATA = DataSettings(max_rows=1500, split="capture")


@pytest.fixture(scope="module")
def inputs() -> ReferenceInputs:
    return ReferenceInputs(prepare_data(DATA), template_for(DATA))


def test_tcp_rule_calls_exactly_the_tcp_flows_malicious(inputs: ReferenceInputs) -> None:
    pred = REFERENCES["tcp_rule"](inputs)
    assert np.array_equal(pred == 1, inputs.test.strings["proto"] == "tcp")


def test_lookup_answers_a_seen_text_with_its_training_majority(inputs: ReferenceInputs) -> None:
    pred = REFERENCES["lookup"](inputs)
    votes: dict[str, Counter[int]] = {}
    for text, label in zip(inputs.train_texts, inputs.y_train.tolist(), strict=True):
        votes.setdefault(text, Counter())[label] += 1
    for text, got in zip(inputs.test_texts, pred.tolist(), strict=True):
        expected = votes[text].most_common(1)[0][0] if text in votes else inputs.majority
        assert got == expected


def test_majority_predicts_one_class(inputs: ReferenceInputs) -> None:
    assert set(REFERENCES["majority"](inputs).tolist()) == {inputs.majority}


def test_every_reference_is_reported_on_every_test_flow() -> None:
    prepared = prepare_data(DATA)
    reports = reference_reports(prepared, template_for(DATA))
    assert {r["flows"] for r in reports.values()} == {len(prepared.splits.test)}
