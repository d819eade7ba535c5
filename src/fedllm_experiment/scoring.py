"""A trained model's detection report on the experiment's test split (docs/experiment.md).

The test split comes as distinct (capture, text, class) items with the flows each stands for
(``load_eval_data``), so scoring every flow of the test captures costs one forward pass per
distinct text.

Threshold: besides the argmax decision, a report at the P(malicious) threshold that maximises
macro-F1 on the validation split (by capture: captures neither trained nor tested on). A flow
is called benign below the threshold, else the most likely malicious class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedllm_core.data import EvalData
from fedllm_core.detection import detection_report
from fedllm_core.metrics import classification_metrics
from fedllm_core.model import ModelBundle
from fedllm_core.training import encode_split, predict_logits

MAX_CANDIDATES = 200  # thresholds tried: quantiles of the validation probabilities


def _probabilities(bundle: ModelBundle, items: EvalData, max_length: int) -> np.ndarray:
    split = encode_split(bundle.tokenizer, items.texts, items.labels, max_length)
    logits = predict_logits(bundle, split)  # (N, C)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # (N, C) softmax


def decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class ids: argmax, or benign (0) when P(malicious) < threshold, else the top attack."""
    if threshold is None:
        return probs.argmax(axis=1).astype(np.int64)
    attack = probs[:, 1:].argmax(axis=1) + 1
    return np.where(1.0 - probs[:, 0] >= threshold, attack, 0).astype(np.int64)


def choose_threshold(probs: np.ndarray, items: EvalData) -> float:
    """The P(malicious) threshold with the best per-flow macro-F1 on ``items`` (ties: 0.5-most)."""
    p_bad = 1.0 - probs[:, 0]
    candidates = np.unique(np.quantile(p_bad, np.linspace(0, 1, MAX_CANDIDATES)))
    candidates = np.append(candidates, 0.5)
    n = len(items.label_names)

    def score(t: float) -> tuple[float, float]:
        pred = decide(probs, float(t))
        f1 = classification_metrics(items.labels, pred, n, weights=items.weights)["f1_macro"]
        return f1, -abs(t - 0.5)

    return float(max(candidates, key=score))


def _report(probs: np.ndarray, test: EvalData, threshold: float | None, seed: int) -> dict:
    return detection_report(
        test.labels,
        decide(probs, threshold),
        test.label_names,
        captures=test.captures,
        texts=test.texts,
        weights=test.weights,
        seed=seed,
    )


def model_detection(
    bundle: ModelBundle,
    test: EvalData,
    max_length: int,
    *,
    validation: EvalData | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The argmax report, plus ``val_threshold`` (threshold and report) given a validation set."""
    probs = _probabilities(bundle, test, max_length)
    report = _report(probs, test, None, seed)
    if validation is not None and len(validation.texts):
        threshold = choose_threshold(_probabilities(bundle, validation, max_length), validation)
        tuned = _report(probs, test, threshold, seed)
        report["val_threshold"] = {"threshold": threshold, **tuned}
    return report
