"""The ``[model]`` settings section, apart from the model code so reading settings stays light.

Why a module of its own: both daemons' settings models hold a ``ModelSettings``, and a bad
settings file must fail in a fraction of a second, not after importing torch and transformers
(fedllm_core.model, which re-exports this class, builds the model). Imports pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedllm_core.embedded import EMBEDDED_MINILM
from fedllm_core.settings import FrozenSettings

ConfigValue = int | float | str | bool


class ModelSettings(FrozenSettings):
    """The ``[model]`` section shared by server and clients (all but device/dtype/threads must
    agree across the federation; ``model_fingerprint`` checks that)."""

    name: str = EMBEDDED_MINILM  # embedded:<key>, a local directory, a hub id, or (random) a type
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)  # 0: no extra copy of x per LoRA layer (CPU)
    target_modules: tuple[str, ...] | None = None  # None: per-architecture default (lora.py)
    train_head: bool = True
    max_length: int = Field(64, ge=4, le=4096)  # tokens per prompt, truncation limit
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # frozen base weights + autocast compute; trainable state stays float32 whatever this says
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    torch_threads: int = Field(0, ge=0)  # 0: leave torch's default
    random_init: bool = False  # random weights from a config: no weights file needed
    config_overrides: dict[str, ConfigValue] = Field(default_factory=dict)
    base_seed: int = 0  # seeds every frozen random weight (must agree across the federation)
