"""What a security engineer needs to trust a detector: metrics per flow, per capture, per text.

Rules:
- Inputs are per evaluated item: true and predicted class ids, the flows it stands for
  (``weights``: a distinct text seen k times weighs k), its capture and its text. Class 0 is
  ``Benign``; every other class is malicious, so a multiclass result also reads as detection.
- Pooled metrics count flows. ``per_capture`` and ``capture_mean_accuracy`` count each capture
  once (a capture of 29k flows does not drown one of 16). ``distinct`` counts each distinct
  (text, class) pair once: how the model does on the variety of traffic, not on its bulk (a
  capture that repeats one flow 20,000 times cannot carry the score).
- Confidence intervals resample whole captures with replacement (flows of one capture are not
  independent draws, so the iid formula would be far too narrow). With fewer than 5 test
  captures the interval is reported but says little; ``captures`` says how many there were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedllm_core.metrics import confusion_matrix, metrics_from_confusion

BOOTSTRAP_ROUNDS = 1000
BENIGN_ID = 0


def _binary(cm: np.ndarray) -> dict[str, float]:
    """Malicious-class precision, recall and F1 of a confusion matrix (any class > 0)."""
    tp = float(cm[1:, 1:].sum())
    predicted, actual = float(cm[:, 1:].sum()), float(cm[1:, :].sum())
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _per_capture(
    y_true: np.ndarray, y_pred: np.ndarray, w: np.ndarray, captures: np.ndarray, n: int
) -> dict[str, np.ndarray]:
    return {
        name: confusion_matrix(y_true[m], y_pred[m], n, w[m])
        for name in sorted(set(captures.tolist()))
        for m in [captures == name]
    }


def _capture_mean(confusions: Sequence[np.ndarray]) -> float:
    return float(np.mean([np.trace(cm) / cm.sum() for cm in confusions]))


def _bootstrap(confusions: Sequence[np.ndarray], rounds: int, seed: int) -> dict[str, list[float]]:
    """95 % percentile intervals of pooled macro-F1, accuracy and capture-mean accuracy."""
    rng = np.random.default_rng(seed)
    stack = np.stack(confusions)  # (K, C, C)
    draws: dict[str, list[float]] = {"f1_macro": [], "accuracy": [], "capture_mean_accuracy": []}
    for _ in range(rounds):
        pick = rng.integers(0, len(stack), len(stack))
        pooled = metrics_from_confusion(stack[pick].sum(axis=0))
        draws["f1_macro"].append(pooled["f1_macro"])
        draws["accuracy"].append(pooled["accuracy"])
        draws["capture_mean_accuracy"].append(_capture_mean(list(stack[pick])))
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()
    }


def _distinct(
    y_true: np.ndarray, y_pred: np.ndarray, texts: Sequence[str], n: int
) -> dict[str, float]:
    first: dict[tuple[str, int], int] = {}
    for i, key in enumerate(zip(texts, y_true.tolist(), strict=True)):
        first.setdefault(key, i)
    rows = np.fromiter(first.values(), np.int64, len(first))
    cm = confusion_matrix(y_true[rows], y_pred[rows], n)
    return {
        **{k: metrics_from_confusion(cm)[k] for k in ("accuracy", "f1_macro")},
        "items": len(rows),
    }


def detection_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    label_names: Sequence[str],
    *,
    captures: np.ndarray,
    texts: Sequence[str],
    weights: np.ndarray | None = None,
    bootstrap_rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Every figure of the evaluation protocol (docs/experiment.md) for one model on one split."""
    true = np.asarray(y_true, np.int64)
    pred = np.asarray(y_pred, np.int64)
    w = np.ones(len(true), np.int64) if weights is None else np.asarray(weights, np.int64)
    caps = np.asarray(captures).astype(str)
    n = len(label_names)
    cm = confusion_matrix(true, pred, n, w)
    confusions = _per_capture(true, pred, w, caps, n)
    return {
        **metrics_from_confusion(cm),
        "malicious": _binary(cm),
        "predicted_malicious_share": float(cm[:, 1:].sum() / cm.sum()),
        "confusion": cm.tolist(),
        "labels": list(label_names),
        "per_capture": {
            name: {"accuracy": float(np.trace(c) / c.sum()), "flows": int(c.sum())}
            for name, c in confusions.items()
        },
        "capture_mean_accuracy": _capture_mean(list(confusions.values())),
        "distinct": _distinct(true, pred, texts, n),
        "ci95": _bootstrap(list(confusions.values()), bootstrap_rounds, seed),
        "captures": len(confusions),
        "flows": int(cm.sum()),
    }
