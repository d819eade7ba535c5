"""The real embedded all-MiniLM-L6-v2: sha256-verified, loaded with no network, classifies."""

import socket

import numpy as np
import pytest

from fedllm_core.embedded import MINILM_SHA256, file_sha256, resolve_model_path
from fedllm_core.model import ModelSettings, build_model, trainable_state
from fedllm_core.training import LocalTrainer, TrainSettings, encode_split

pytestmark = pytest.mark.slow


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted while loading the embedded model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_embedded_weights_match_the_pinned_sha256():
    from pathlib import Path

    weights = Path(resolve_model_path("embedded:all-MiniLM-L6-v2")) / "model.safetensors"
    assert file_sha256(weights) == MINILM_SHA256


def test_embedded_minilm_loads_offline_and_learns_to_classify(no_network):
    bundle = build_model(ModelSettings(device="cpu"), ("benign", "malicious"), seed=0)
    assert bundle.model_type == "bert" and "classifier.weight" in trainable_state(bundle.model)
    texts = [
        f"proto=tcp service={'-' if i % 2 else 'http'} conn_state={'S0' if i % 2 else 'SF'} "
        f"orig_bytes={0 if i % 2 else 300 + i} history={'S' if i % 2 else 'ShADadFf'}"
        for i in range(48)
    ]
    labels = [i % 2 for i in range(48)]
    split = encode_split(bundle.tokenizer, texts, labels, max_length=64)
    trainer = LocalTrainer(bundle, split, TrainSettings(lr=2e-3, batch_size=16))
    for _ in range(15):
        trainer.step()
    metrics = trainer.evaluate(split)
    assert metrics["accuracy"] >= 0.9 and np.isfinite(metrics["loss"])
