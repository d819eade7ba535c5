"""Reference detectors scored beside every model, on the same split, by the same report.

A figure means detection only when it beats what needs no learning about traffic:
- ``majority``: the training rows' most common class for every flow (the all-benign floor);
- ``tcp_rule``: "every TCP flow is malicious" (multiclass: the most common malicious class);
  on IoT-23 most attack traffic is TCP, so this one-line rule scores far above chance;
- ``lookup``: a table of the training texts (text -> its majority class, unseen -> majority),
  i.e. pure memory; on a random split of IoT-23 it scores almost perfectly;
- ``lightgbm_fields``: gradient-boosted trees on the raw connection fields (exact values);
- ``lightgbm_text``: the same trees on the words of the prompt text the model reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from fedllm_core.data import PreparedData
from fedllm_core.data.labels import BENIGN
from fedllm_core.detection import detection_report
from fedllm_core.prompts import Template, render
from fedllm_experiment import gbt

Predictor = Callable[["ReferenceInputs"], np.ndarray]


class ReferenceInputs:
    """Train and test rows of one split, as fields and as texts."""

    def __init__(self, prepared: PreparedData, template: Template) -> None:
        rows = prepared.splits
        self.prepared = prepared
        self.train, self.test = prepared.flows.take(rows.train), prepared.flows.take(rows.test)
        self.y_train, self.y_test = prepared.labels[rows.train], prepared.labels[rows.test]
        self.train_texts = render(template, prepared.flows, rows.train)
        self.test_texts = render(template, prepared.flows, rows.test)
        self.num_labels = len(prepared.label_names)
        self.majority = int(np.bincount(self.y_train, minlength=self.num_labels).argmax())


def _majority(x: ReferenceInputs) -> np.ndarray:
    return np.full(len(x.y_test), x.majority, np.int64)


def _tcp_rule(x: ReferenceInputs) -> np.ndarray:
    malicious = x.y_train[x.y_train != x.prepared.label_names.index(BENIGN)]
    attack = int(np.bincount(malicious).argmax()) if len(malicious) else 1
    tcp = x.test.strings["proto"] == "tcp"
    return np.where(tcp, attack, 0).astype(np.int64)


def _lookup(x: ReferenceInputs) -> np.ndarray:
    votes: dict[str, Counter[int]] = {}
    for text, label in zip(x.train_texts, x.y_train.tolist(), strict=True):
        votes.setdefault(text, Counter())[label] += 1
    table = {text: c.most_common(1)[0][0] for text, c in votes.items()}
    return np.array([table.get(t, x.majority) for t in x.test_texts], dtype=np.int64)


def _lightgbm_fields(x: ReferenceInputs) -> np.ndarray:
    return gbt.fit_predict_fields(x.train, x.y_train, x.test, x.num_labels)


def _lightgbm_text(x: ReferenceInputs) -> np.ndarray:
    return gbt.fit_predict_tokens(x.train_texts, x.y_train, x.test_texts, x.num_labels)


REFERENCES: dict[str, Predictor] = {
    "majority": _majority,
    "tcp_rule": _tcp_rule,
    "lookup": _lookup,
    "lightgbm_fields": _lightgbm_fields,
    "lightgbm_text": _lightgbm_text,
}


def reference_reports(
    prepared: PreparedData, template: Template, *, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """The detection report of every reference detector on ``prepared``'s test split."""
    x = ReferenceInputs(prepared, template)
    captures = prepared.flows.captures[prepared.splits.test]
    return {
        name: detection_report(
            x.y_test,
            predict(x),
            prepared.label_names,
            captures=captures,
            texts=x.test_texts,
            seed=seed,
        )
        for name, predict in REFERENCES.items()
    }
