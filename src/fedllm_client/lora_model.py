"""``LoraModel``: the real local model, a LoRA-wrapped classifier on this client's IoT-23 share.

Rules: everything comes from fedllm_core (data partition, prompt template, model, trainer), so
client and server derive the same label set, template and fingerprint from the same settings.
Tokenised splits are cached under ``<state_dir>/cache`` (a restarted client does not tokenise
again). The test split for ``final_eval`` is loaded only when asked for. Runs on the worker
thread only (see worker_thread.py); a ``LocalModel`` (local_model.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedllm_client.attack import poison_labels
from fedllm_client.local_model import StepResult
from fedllm_core.data import load_client_data, load_eval_data
from fedllm_core.model import (
    ModelBundle,
    build_model,
    fingerprint_parts,
    layer_groups,
    load_trainable_state,
    model_fingerprint,
    trainable_state,
)
from fedllm_core.training import EncodedSplit, LocalTrainer, encode_split
from fedllm_proto.codec import TensorDict

if TYPE_CHECKING:
    from fedllm_client.settings import ClientSettings
    from fedllm_core.prompts import Template


class LoraModel:
    persists_tensors = True

    def __init__(
        self,
        settings: ClientSettings,
        bundle: ModelBundle,
        trainer: LocalTrainer,
        val: EncodedSplit,
        template: Template,
        sample_count: int,
    ) -> None:
        self.settings, self.bundle, self.trainer, self.val = settings, bundle, trainer, val
        self.template = template
        self.sample_count = sample_count
        self.fingerprint = model_fingerprint(settings.model, bundle.labels, template)
        self.fingerprint_parts = fingerprint_parts(settings.model, bundle.labels, template)
        self.device = str(bundle.device)
        self._layers = layer_groups(trainer.params)

    @classmethod
    def build(cls, settings: ClientSettings) -> LoraModel:
        data = load_client_data(settings.data)
        bundle = build_model(settings.model, data.label_names, seed=settings.seed)
        labels = poison_labels(data.train_labels, len(data.label_names), settings.attack)
        train = _encode(settings, bundle, data.train_texts, labels)
        val = _encode(settings, bundle, data.val_texts, data.val_labels)
        trainer = LocalTrainer(bundle, train, settings.train, seed=settings.seed)
        return cls(settings, bundle, trainer, val, data.template, data.sample_count)

    def layers(self) -> dict[str, list[str]]:
        return self._layers

    def set_state(self, tensors: TensorDict) -> None:
        load_trainable_state(self.bundle.model, tensors)

    def anchor(self) -> None:
        self.trainer.set_anchor()

    def state(self) -> TensorDict:
        return trainable_state(self.bundle.model)

    def delta(self, base: TensorDict) -> TensorDict:
        local = self.state()
        return {name: np.subtract(local[name], base[name], dtype=np.float32) for name in local}

    def step(self) -> StepResult:
        stats = self.trainer.step()
        return StepResult(loss=stats.loss, layer_grad_norms=stats.layer_grad_norms)

    def validate(self) -> dict[str, float]:
        if len(self.val) == 0:
            return {}
        cap = self.settings.validation_max_samples or None
        return self.trainer.evaluate(self.val, max_samples=cap)

    def evaluate_test(self, max_samples: int) -> dict[str, float]:
        test = load_eval_data(self.settings.data, self.template)
        split = _encode(self.settings, self.bundle, test.texts, test.labels, test.weights)
        result = self.trainer.evaluate(split, max_samples=max_samples or None)
        return {**result, "samples": float(min(test.flows, max_samples or test.flows))}

    def optimizer_state(self) -> TensorDict | None:
        return self.trainer.optimizer_state()

    def load_optimizer_state(self, state: TensorDict) -> None:
        self.trainer.load_optimizer_state(state)

    def reset_optimizer(self) -> None:
        self.trainer.reset_optimizer()


def _encode(
    settings: ClientSettings,
    bundle: ModelBundle,
    texts: list[str],
    labels: np.ndarray,
    weights: np.ndarray | None = None,
) -> EncodedSplit:
    cache = settings.state_dir / "cache"
    return encode_split(
        bundle.tokenizer,
        texts,
        labels,
        settings.model.max_length,
        cache_dir=cache,
        weights=weights,
    )
