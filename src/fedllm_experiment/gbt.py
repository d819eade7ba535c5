"""Gradient-boosted trees on the flow fields: the baseline a practitioner would try first.

Features are exactly the connection fields the prompt templates may read
(``fedllm_core.prompts.PROMPT_FIELDS``, plus the host context when it is on): the same
information the language model sees, with no addresses, timestamps or capture names (those
identify the capture and with it the label).
Categorical fields become integer codes learned on the training rows; a value unseen in training
maps to LightGBM's missing value, as it would for a new deployment.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedllm_core.data.table import FlowTable
from fedllm_core.hostcontext import CONTEXT_FIELDS
from fedllm_core.metrics import classification_metrics
from fedllm_core.prompts import PROMPT_FIELDS

CATEGORICAL = ("proto", "service", "conn_state", "history")
NUMERIC = tuple(f for f in PROMPT_FIELDS if f not in CATEGORICAL)
DEFAULT_PARAMS: Mapping[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_child_samples": 10,
    "n_jobs": 1,  # the comparison runs on the same cores as the federation: one thread
    "verbose": -1,
}


def fit_codes(train: FlowTable) -> dict[str, dict[str, int]]:
    """Category -> code per categorical field, from the training rows only (sorted: stable)."""
    return {
        field: {v: i for i, v in enumerate(sorted(set(train.strings[field].tolist())))}
        for field in CATEGORICAL
    }


def features(flows: FlowTable, codes: Mapping[str, Mapping[str, int]]) -> np.ndarray:
    """(N, F) float64 matrix: numeric fields as they are (NaN = unset), categories as codes,
    then the host context columns when the table carries them (``host_context_s``: the trees
    then see what the language model's prompt says)."""
    columns = [flows.numbers[field] for field in NUMERIC]
    for field in CATEGORICAL:
        table = codes[field]
        raw = flows.strings[field].tolist()
        columns.append(np.array([table.get(v, np.nan) for v in raw], dtype=np.float64))
    columns += [flows.numbers[field] for field in CONTEXT_FIELDS if field in flows.numbers]
    return np.stack(columns, axis=1) if len(flows) else np.zeros((0, len(columns)))


def _classifier(num_labels: int, seed: int, params: Mapping[str, Any]) -> Any:
    from lightgbm import LGBMClassifier

    objective = "binary" if num_labels == 2 else "multiclass"
    return LGBMClassifier(objective=objective, random_state=seed, **params)


def _fit_fields(
    train: FlowTable, y_train: np.ndarray, num_labels: int, seed: int, params: Mapping[str, Any]
) -> tuple[Any, dict[str, dict[str, int]]]:
    """LightGBM fitted on the raw fields of ``train``, and the category codes it was fitted with."""
    codes = fit_codes(train)
    categorical = list(range(len(NUMERIC), len(NUMERIC) + len(CATEGORICAL)))
    model = _classifier(num_labels, seed, params)
    model.fit(features(train, codes), y_train, categorical_feature=categorical)
    return model, codes


def train_and_score(
    train: FlowTable,
    y_train: np.ndarray,
    test: FlowTable,
    y_test: np.ndarray,
    labels: Sequence[str],
    *,
    seed: int = 0,
    params: Mapping[str, Any] = DEFAULT_PARAMS,
) -> dict[str, Any]:
    """Fit on ``train``, score on ``test``; metrics plus honest fit and per-flow predict times."""
    start = time.perf_counter()
    model, codes = _fit_fields(train, y_train, len(labels), seed, params)
    fit_s = time.perf_counter() - start
    x_test = features(test, codes)
    pred = np.asarray(model.predict(x_test), dtype=np.int64)
    metrics = classification_metrics(y_test, pred, len(labels))
    return {
        "metrics": metrics,
        "fit_s": fit_s,
        "latency": _latency(model, x_test),
        "params": dict(params),
    }


def _latency(
    model: Any, x_test: np.ndarray, requests: int = 200, warmup: int = 10
) -> dict[str, Any]:
    """Batch-1 median/p95 and batched per-flow time of ``predict`` (feature encoding excluded)."""
    if not len(x_test):
        return {}
    singles = []
    for i in range(warmup + requests):
        row = x_test[i % len(x_test)][None, :]
        start = time.perf_counter()
        model.predict(row)
        singles.append(time.perf_counter() - start)
    ms = np.array(singles[warmup:]) * 1000.0
    start = time.perf_counter()
    model.predict(x_test)
    batched_ms = 1000.0 * (time.perf_counter() - start) / len(x_test)
    return {
        "batch1_median_ms": float(np.median(ms)),
        "batch1_p95_ms": float(np.percentile(ms, 95)),
        "batch1_requests": requests,
        "batched_ms_per_flow": batched_ms,
        "batch_size": len(x_test),
        "flows_per_min": 60000.0 / batched_ms,
        "warmup_requests": warmup,
        "device": "cpu",
        "threads": int(model.get_params().get("n_jobs") or 1),
    }


def fit_token_codes(texts: Sequence[str]) -> list[dict[str, int]]:
    """Per word position of a template's texts: word -> code, from the training texts only."""
    width = max((len(t.split()) for t in texts), default=0)
    vocab: list[set[str]] = [set() for _ in range(width)]
    for text in texts:
        for position, word in enumerate(text.split()):
            vocab[position].add(word)
    return [{w: i for i, w in enumerate(sorted(words))} for words in vocab]


def token_features(texts: Sequence[str], codes: Sequence[Mapping[str, int]]) -> np.ndarray:
    """(N, positions) float64: each word of the text as a category code (NaN: unseen or absent).

    Trees on the words of the prompt text see exactly what the language model sees (with a
    shortcut-proof template: service names and log2 bins, never exact counts).
    """
    out = np.full((len(texts), len(codes)), np.nan)
    for row, text in enumerate(texts):
        for position, word in enumerate(text.split()[: len(codes)]):
            out[row, position] = codes[position].get(word, np.nan)
    return out


def fit_predict_tokens(
    train_texts: Sequence[str],
    y_train: np.ndarray,
    texts: Sequence[str],
    num_labels: int,
    *,
    seed: int = 0,
    params: Mapping[str, Any] = DEFAULT_PARAMS,
) -> np.ndarray:
    """LightGBM on the words of the prompt texts: predicted class ids of ``texts``."""
    codes = fit_token_codes(train_texts)
    model = _classifier(num_labels, seed, params)
    model.fit(
        token_features(train_texts, codes), y_train, categorical_feature=list(range(len(codes)))
    )
    return np.asarray(model.predict(token_features(texts, codes)), dtype=np.int64)


def fit_predict_fields(
    train: FlowTable,
    y_train: np.ndarray,
    test: FlowTable,
    num_labels: int,
    *,
    seed: int = 0,
    params: Mapping[str, Any] = DEFAULT_PARAMS,
) -> np.ndarray:
    """LightGBM on the raw connection fields (exact values): predicted class ids of ``test``."""
    model, codes = _fit_fields(train, y_train, num_labels, seed, params)
    return np.asarray(model.predict(features(test, codes)), dtype=np.int64)
