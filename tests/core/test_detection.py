"""The detection report against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fedllm_core.detection import detection_report

NAMES = ("Benign", "Malicious")
# capture A: 3 items (one seen 4 times), capture B: 2 items
TRUE = np.array([0, 1, 1, 0, 1])
PRED = np.array([0, 1, 0, 1, 1])
WEIGHTS = np.array([4, 1, 1, 1, 2])
CAPTURES = np.array(["A", "A", "A", "B", "B"], dtype=object)
TEXTS = ["x", "y", "z", "x", "y"]


def _report() -> dict:
    return detection_report(
        TRUE, PRED, NAMES, captures=CAPTURES, texts=TEXTS, weights=WEIGHTS, bootstrap_rounds=50
    )


def test_pooled_accuracy_counts_flows() -> None:
    # correct flows: 4 (x,A) + 1 (y,A) + 2 (y,B) = 7 of 9
    assert _report()["accuracy"] == pytest.approx(7 / 9)


def test_confusion_counts_flows() -> None:
    assert _report()["confusion"] == [[4, 1], [1, 3]]


def test_malicious_class_figures() -> None:
    # tp 3, predicted malicious 4, actual malicious 4
    assert _report()["malicious"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75})


def test_predicted_malicious_share() -> None:
    assert _report()["predicted_malicious_share"] == pytest.approx(4 / 9)


def test_capture_mean_weighs_each_capture_once() -> None:
    # A: 5 of 6 flows right; B: 2 of 3
    assert _report()["capture_mean_accuracy"] == pytest.approx((5 / 6 + 2 / 3) / 2)


def test_distinct_counts_each_text_and_class_once() -> None:
    # distinct (text, class): (x,0) right, (y,1) right, (z,1) wrong -> 2 of 3
    distinct = _report()["distinct"]
    assert (distinct["items"], distinct["accuracy"]) == (3, pytest.approx(2 / 3))


def test_bootstrap_interval_brackets_the_pooled_value() -> None:
    report = _report()
    low, high = report["ci95"]["accuracy"]
    assert low <= report["accuracy"] <= high


def test_multiclass_reads_as_detection() -> None:
    report = detection_report(
        np.array([2, 1, 0]),
        np.array([1, 1, 0]),
        ("Benign", "C&C", "DDoS"),
        captures=np.array(["A", "A", "A"]),
        texts=["a", "b", "c"],
        bootstrap_rounds=10,
    )
    assert report["malicious"]["recall"] == 1.0  # DDoS called C&C is still detected
