"""A trained model's detection report on the experiment's test split (docs/experiment.md).

The test split comes as distinct (capture, text, class) items with the flows each stands for
(``load_eval_data``), so scoring every flow of the test captures costs one forward pass per
distinct text.
"""

from __future__ import annotations

from typing import Any

from fedllm_core.data import EvalData
from fedllm_core.detection import detection_report
from fedllm_core.model import ModelBundle
from fedllm_core.training import encode_split, predict


def model_detection(
    bundle: ModelBundle, test: EvalData, max_length: int, *, seed: int = 0
) -> dict[str, Any]:
    """Predict every distinct test item once and report per flow, capture and text."""
    split = encode_split(
        bundle.tokenizer, test.texts, test.labels, max_length, weights=test.weights
    )
    return detection_report(
        test.labels,
        predict(bundle, split),
        test.label_names,
        captures=test.captures,
        texts=test.texts,
        weights=test.weights,
        seed=seed,
    )
