"""The server's own model: the initial global state and central evaluation on the test split.

Rules: one model instance per server process, built once from the model settings with the
server seed; its trainable state is θ^0 when no checkpoint exists. Central evaluation loads a
global state into that instance and scores the held-out test split (tokenised once at start-up,
optionally a stratified sample of `evaluation.max_samples` rows). `evaluate` is blocking torch
work: the daemon runs it in its own single worker thread, never on the event loop, and never
concurrently with itself (the instance is shared).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedllm_core.data import (
    load_eval_data,
    load_validation_data,
    stratified_subsample,
    template_for,
)
from fedllm_core.model import (
    ModelBundle,
    build_model,
    fingerprint_parts,
    load_trainable_state,
    model_fingerprint,
    trainable_state,
)
from fedllm_core.training import EncodedSplit, encode_split
from fedllm_core.training import evaluate as evaluate_split
from fedllm_server.best import BestByValidation
from fedllm_server.settings import ServerSettings
from fedllm_server.strategies.base import TensorDict


@dataclass(frozen=True)
class ModelIdentity:
    fingerprint: str
    labels: tuple[str, ...]
    template: str  # name@version
    parts: Mapping[str, str] = field(default_factory=dict)  # fingerprint_parts (no privacy)


class CentralModel:
    """θ^0, the federation fingerprint, and evaluation of any global state."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        template = template_for(settings.data)
        eval_data = load_eval_data(settings.data, template)
        self.identity = ModelIdentity(
            fingerprint=model_fingerprint(settings.model, eval_data.label_names, template),
            parts=fingerprint_parts(settings.model, eval_data.label_names, template),
            labels=tuple(eval_data.label_names),
            template=template.key,
        )
        self.bundle: ModelBundle = build_model(
            settings.model, eval_data.label_names, seed=settings.seed
        )
        self._split: EncodedSplit | None = None
        self._texts, self._labels = eval_data.texts, np.asarray(eval_data.labels)
        self._weights = np.asarray(eval_data.weights)
        self._validation = load_validation_data(settings.data, template)
        self._val_split: EncodedSplit | None = None
        self.best = BestByValidation(settings.state_dir)

    def initial_state(self) -> TensorDict:
        """θ^0: the seeded LoRA factors and head of the freshly built model."""
        return trainable_state(self.bundle.model)

    def _test_split(self) -> EncodedSplit:
        if self._split is None:  # tokenised once, lazily (off the loop, on first evaluation)
            texts, labels, weights = self._texts, self._labels, self._weights
            cap = self.settings.evaluation.max_samples  # distinct test items, stratified
            if cap is not None and len(labels) > cap:
                keep = np.sort(stratified_subsample(labels, cap, self.settings.seed))
                texts, labels, weights = [texts[i] for i in keep], labels[keep], weights[keep]
            self._split = encode_split(
                self.bundle.tokenizer,
                texts,
                labels,
                self.settings.model.max_length,
                weights=weights,
            )
        return self._split

    def _validation_split(self) -> EncodedSplit | None:
        items = self._validation
        if self._val_split is None and len(items.texts):
            self._val_split = encode_split(
                self.bundle.tokenizer,
                items.texts,
                items.labels,
                self.settings.model.max_length,
                weights=items.weights,
            )
        return self._val_split

    def evaluate(self, state: TensorDict, version: int | None = None) -> dict[str, float]:
        """Accuracy, macro/weighted F1, precision, recall and loss of `state` on the test split,
        plus ``val_accuracy`` / ``val_f1_macro`` on the validation split when there is one.

        With ``version``, a state better on validation than every earlier one is kept as the
        best-by-validation model (model selection that never looks at the test split).
        """
        load_trainable_state(self.bundle.model, state)
        split = self._test_split()
        batch = self.settings.evaluation.batch_size
        metrics = evaluate_split(self.bundle, split, batch)
        flows = float(split.weights.sum()) if split.weights is not None else float(len(split))
        result = {**metrics, "samples": flows, "distinct_samples": float(len(split))}
        val_split = self._validation_split()
        if val_split is not None:
            val = evaluate_split(self.bundle, val_split, batch)
            result.update(val_accuracy=val["accuracy"], val_f1_macro=val["f1_macro"])
            if version is not None:
                self.best.offer(version, val["f1_macro"], state)
        return result

    def wants(self, version: int) -> bool:
        """Whether the cadence asks for evaluating this version."""
        every = self.settings.evaluation.every_versions
        if every == 0:
            return False
        if version == 0:
            return self.settings.evaluation.evaluate_initial
        return version % every == 0 or version == self.settings.stop_after_versions
