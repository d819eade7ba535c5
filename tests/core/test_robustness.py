"""Robustness to shortcut edits: a trained model must not key on exact ports or counts.

Editing only what identifies a capture (an unnamed port within its IANA range, a byte or
packet count within its log2 bin; ``jitter_within_bins``) must flip at most
``MAX_FLIP_RATE`` of a trained model's predictions. With compact@2 the documented rate is 0:
its text is unchanged by such an edit. The same edit does change compact@1 texts, which shows
the check can fail (a template that writes exact values would flip predictions).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedllm_core.data import DataSettings, prepare_data
from fedllm_core.flowbins import jitter_within_bins
from fedllm_core.model import ModelSettings, build_model
from fedllm_core.prompts import get_template
from fedllm_core.training import LocalTrainer, TrainSettings, encode_split, predict

MAX_FLIP_RATE = 0.0  # compact@2 (docs/data.md)
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


@pytest.fixture(scope="module")
def records() -> tuple[list[dict], list[dict], np.ndarray]:
    prepared = prepare_data(DataSettings(max_rows=800, split="capture"))
    flows = prepared.flows
    train = [flows.record(int(i)) for i in prepared.splits.train]
    test = [flows.record(int(i)) for i in prepared.splits.test[:300]]
    return train, test, prepared.labels[prepared.splits.train]


def _trained(texts: list[str], labels: np.ndarray):
    settings = ModelSettings(
        name="bert", random_init=True, config_overrides=TINY_BERT, lora_r=4, device="cpu"
    )
    bundle = build_model(settings, ("Benign", "Malicious"), seed=0)
    split = encode_split(bundle.tokenizer, texts, labels, max_length=48)
    trainer = LocalTrainer(bundle, split, TrainSettings(lr=2e-2, batch_size=16), seed=0)
    for _ in range(30):
        trainer.step()
    return bundle


def _flip_rate(bundle, template, test: list[dict]) -> float:
    rng = random.Random(0)
    edited = [jitter_within_bins(r, rng) for r in test]
    before = predict(bundle, encode_split(bundle.tokenizer, [template(r) for r in test], None, 48))
    after = predict(bundle, encode_split(bundle.tokenizer, [template(r) for r in edited], None, 48))
    return float(np.mean(before != after))


def test_shortcut_edits_flip_no_prediction_of_a_compact_v2_model(records) -> None:
    train, test, labels = records
    template = get_template("compact@2")
    bundle = _trained([template(r) for r in train], labels)
    assert _flip_rate(bundle, template, test) <= MAX_FLIP_RATE


def test_shortcut_edits_do_change_exact_value_texts(records) -> None:
    _, test, _ = records
    template, rng = get_template("compact@1"), random.Random(0)
    changed = [template(r) != template(jitter_within_bins(r, rng)) for r in test]
    assert np.mean(changed) > 0.5
