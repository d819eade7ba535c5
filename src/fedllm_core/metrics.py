"""Classification metrics from a confusion matrix (numpy only).

Rules: ``precision`` and ``recall`` are macro averages (unweighted mean over classes), like
``f1_macro``; ``f1_weighted`` weights each class's F1 by its support in ``y_true``. Averages run
over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default label set), so a
class absent from both does not drag a small evaluation sample down. A class with no predictions
has precision 0; with no true samples, recall 0 (scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("accuracy", "f1_macro", "f1_weighted", "precision", "recall")


def confusion_matrix(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_labels: int,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """(num_labels, num_labels) int64 counts, rows = true class, columns = predicted class.

    ``weights`` (non-negative integers) count a sample that many times: a distinct text that
    stands for k flows.
    """
    true = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels, y_pred {pred.size}")
    if true.size and (min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels})")
    w = None if weights is None else np.asarray(weights, dtype=np.int64).ravel()
    if w is not None and (w.shape != true.shape or (w.size and w.min() < 0)):
        raise ValueError(f"weights must be {true.size} non-negative counts")
    counts = np.bincount(true * num_labels + pred, weights=w, minlength=num_labels * num_labels)
    return counts.astype(np.int64).reshape(num_labels, num_labels)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_labels: int,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """accuracy, f1_macro, f1_weighted, precision (macro), recall (macro)."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, num_labels, weights))


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """The ``METRIC_NAMES`` of one confusion matrix (rows true, columns predicted)."""
    total = cm.sum()
    if total == 0:
        raise ValueError("no samples to score")
    tp = np.diag(cm).astype(np.float64)  # (C,)
    support = cm.sum(axis=1).astype(np.float64)  # (C,) true samples per class
    predicted = cm.sum(axis=0).astype(np.float64)  # (C,) predictions per class
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    return {
        "accuracy": float(tp.sum() / total),
        "f1_macro": float(f1[present].mean()),
        "f1_weighted": float((f1 * support).sum() / support.sum()),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
    }
