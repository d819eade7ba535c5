"""classification_metrics against hand-computed confusion matrices."""

import numpy as np
import pytest

from fedllm_core.metrics import classification_metrics, confusion_matrix

# true:  0 0 1 1 2 2      per class (tp / predicted / support):
# pred:  0 1 1 1 2 0      0: 1/2/2  1: 2/3/2  2: 1/1/2
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_confusion_matrix_counts():
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED, 3), expected)


def test_metrics_match_hand_computed_values():
    # precision 1/2, 2/3, 1; recall 1/2, 1, 1/2; f1 1/2, 4/5, 2/3
    got = classification_metrics(Y_TRUE, Y_PRED, 3)
    assert got == pytest.approx(
        {
            "accuracy": 4 / 6,
            "precision": (1 / 2 + 2 / 3 + 1) / 3,
            "recall": (1 / 2 + 1 + 1 / 2) / 3,
            "f1_macro": (1 / 2 + 4 / 5 + 2 / 3) / 3,
            "f1_weighted": (1 / 2 + 4 / 5 + 2 / 3) / 3,  # equal supports
        }
    )


def test_weighted_f1_weights_by_support():
    # class 0: support 3, tp 3, predicted 4 -> p 3/4, r 1, f1 6/7; class 1: support 1, tp 0 -> f1 0
    got = classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), 2)
    assert got["f1_weighted"] == pytest.approx(3 / 4 * 6 / 7)


def test_class_absent_from_both_sides_is_not_averaged():
    assert classification_metrics(Y_TRUE, Y_PRED, 5) == classification_metrics(Y_TRUE, Y_PRED, 3)


def test_agrees_with_scikit_learn_on_random_labels():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    got = classification_metrics(y_true, y_pred, 4)
    assert got["precision"] == pytest.approx(
        metrics.precision_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert got["f1_weighted"] == pytest.approx(
        metrics.f1_score(y_true, y_pred, average="weighted", zero_division=0)
    )


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), 3)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        classification_metrics(np.array([], dtype=int), np.array([], dtype=int), 2)
