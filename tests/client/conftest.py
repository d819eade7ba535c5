"""Shared helpers for the client tests: tiny random-model client settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedllm_client.settings import ClientSettings
from fedllm_core.settings import deep_merge

# A 1-layer BERT with 32 hidden units on 2,000 IoT-23 rows: builds and trains in seconds on CPU.
TINY_MODEL: dict[str, Any] = {
    "name": "bert",
    "random_init": True,
    "config_overrides": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "max_length": 48,
    "torch_threads": 1,
}
TINY_DATA: dict[str, Any] = {"max_rows": 2000, "num_partitions": 2, "test_max": 100}


def tiny_settings(state_dir: Path, **extra: Any) -> ClientSettings:
    """Client settings for a tiny model (plain TCP unless ``extra`` gives TLS)."""
    base: dict[str, Any] = {
        "insecure": True,
        "client_name": "c0",
        "state_dir": state_dir,
        "model": TINY_MODEL,
        "data": TINY_DATA,
        "train": {"batch_size": 8, "lr": 5e-3},
        "validation_max_samples": 64,
        "max_total_steps": 40,
        "final_eval": {"max_samples": 50},
    }
    return ClientSettings.model_validate(deep_merge(base, extra))


@pytest.fixture
def tiny(tmp_path: Path) -> ClientSettings:
    return tiny_settings(tmp_path / "state")
