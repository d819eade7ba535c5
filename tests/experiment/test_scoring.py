"""Threshold decisions and the validation-chosen threshold, against hand-computed values."""

from __future__ import annotations

import numpy as np

from fedllm_core.data import EvalData
from fedllm_experiment.scoring import choose_threshold, decide

# P(benign), P(attack A), P(attack B) per item
PROBS = np.array([[0.9, 0.05, 0.05], [0.6, 0.1, 0.3], [0.3, 0.6, 0.1], [0.2, 0.1, 0.7]])


def _items(labels: list[int], weights: list[int]) -> EvalData:
    n = len(labels)
    return EvalData(
        texts=[f"t{i}" for i in range(n)],
        labels=np.array(labels),
        label_names=("Benign", "A", "B"),
        weights=np.array(weights),
        captures=np.array(["c"] * n, dtype=object),
    )


def test_argmax_without_threshold() -> None:
    assert decide(PROBS, None).tolist() == [0, 0, 1, 2]


def test_threshold_calls_benign_below_it_and_the_top_attack_above() -> None:
    # P(malicious) = 0.1, 0.4, 0.7, 0.8
    assert decide(PROBS, 0.35).tolist() == [0, 2, 1, 2]


def test_chosen_threshold_separates_the_validation_classes() -> None:
    # item 1 (P(malicious) 0.4) is an attack B: only a threshold in (0.1, 0.4] gets all right
    threshold = choose_threshold(PROBS, _items([0, 2, 1, 2], [1, 1, 1, 1]))
    assert 0.1 < threshold <= 0.4


def test_chosen_threshold_weighs_items_by_their_flows() -> None:
    # item 1 benign and seen 50 times: the threshold must stay above its 0.4
    threshold = choose_threshold(PROBS, _items([0, 0, 1, 2], [1, 50, 1, 1]))
    assert 0.4 < threshold <= 0.7
