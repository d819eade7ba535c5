"""Model settings and building: a sequence classifier with LoRA adapters and a trained head.

Rules: the frozen base model never travels, so every process must build a bit-identical base:
random initialisations of frozen weights (a random-init model, or weights missing from a
checkpoint) draw from ``ModelSettings.base_seed``, never from the per-client ``seed``. The
trainable state (LoRA factors + head) is kept float32 even when the frozen base is bfloat16
(CUDA), so the optimizer and the wire always see float32 master weights. The embedded model and
local directories load with ``local_files_only``; hub ids are left to transformers.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedllm_core.embedded import (
    embedded_tokenizer_dir,
    is_local,
    resolve_model_path,
)
from fedllm_core.errors import ModelError
from fedllm_core.lora import (
    FAN_IN_FAN_OUT,
    default_target_modules,
    layer_groups,
    load_trainable_state,
    trainable_parameters,
    trainable_state,
)
from fedllm_core.model_settings import ConfigValue, ModelSettings

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "SMALL_CONFIGS",
    "ModelBundle",
    "ModelSettings",
    "build_model",
    "layer_groups",
    "load_trainable_state",
    "model_fingerprint",
    "resolve_model_path",
    "trainable_state",
]

# Starting point of a randomly initialised model named by model_type (tests, `bench models`):
# two small layers; ``config_overrides`` are laid over these.
SMALL_CONFIGS: dict[str, dict[str, ConfigValue]] = {
    "bert": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
    ),
    "opt": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=256,
        word_embed_proj_dim=128,
    ),
    "gpt2": dict(n_embd=128, n_layer=2, n_head=4),
    "llama": dict(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=256,
    ),
}


@dataclass
class ModelBundle:
    """A built model with what is needed to feed it."""

    model: nn.Module  # peft-wrapped sequence classifier
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    device: torch.device
    compute_dtype: torch.dtype  # frozen weights + autocast: bfloat16 (CUDA, AMX CPU) or float32
    settings: ModelSettings
    labels: tuple[str, ...]
    model_type: str
    target_modules: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device = 'cuda' but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bfloat16 matrix instructions (AMX or AVX512-BF16; Linux only)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """Dtype of frozen weights and of autocast compute ("auto": bf16 where the hardware has it).

    On CPUs with AMX / AVX512-BF16 a bf16 step costs ~0.55x an fp32 one (docs/model.md); on
    other CPUs bf16 is emulated and slower, so "auto" stays float32 there.
    """
    if setting == "float32":
        return torch.float32
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if setting == "bfloat16":
            raise ModelError("model.dtype = 'bfloat16' but this GPU does not support it")
        return torch.float32
    if setting == "bfloat16" or cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _load_tokenizer(settings: ModelSettings) -> Any:
    from transformers import AutoTokenizer

    if settings.random_init:  # random models share the embedded MiniLM (BERT WordPiece) vocab
        return AutoTokenizer.from_pretrained(str(embedded_tokenizer_dir()), local_files_only=True)
    source = resolve_model_path(settings.name)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=is_local(settings.name))
    if tokenizer.pad_token is None:  # GPT-2/OPT/Llama style: pad with EOS (right padding)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ModelError(f"tokenizer of {settings.name!r} has no pad, eos or unk token")
    tokenizer.padding_side = "right"
    return tokenizer


def _random_config(settings: ModelSettings, tokenizer: Any, labels: Sequence[str]) -> Any:
    from transformers import AutoConfig

    name = settings.name
    if is_local(name):
        config = AutoConfig.from_pretrained(resolve_model_path(name, verify=False))
        base: dict[str, ConfigValue] = {}
    else:
        config = AutoConfig.for_model(name)
        base = dict(SMALL_CONFIGS.get(name, {}))
    special = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    for key, value in {**base, **special, **settings.config_overrides}.items():
        setattr(config, key, value)
    _set_labels(config, labels)
    return config


def _set_labels(config: Any, labels: Sequence[str]) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


def _load_base(settings: ModelSettings, tokenizer: Any, labels: Sequence[str]) -> PreTrainedModel:
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(settings.base_seed)  # every frozen random weight comes from base_seed
    if settings.random_init:
        config = _random_config(settings, tokenizer, labels)
        return AutoModelForSequenceClassification.from_config(config)
    source = resolve_model_path(settings.name)
    local = is_local(settings.name)
    config = AutoConfig.from_pretrained(source, local_files_only=local)
    _set_labels(config, labels)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id  # decoder heads find the last real token
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised classifier" is expected, not news
    hf_logging.disable_progress_bar()  # daemons log events, not tqdm bars
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, config=config, local_files_only=local
        )
    except OSError as exc:
        raise ModelError(f"cannot load model {settings.name!r}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _attach_lora(
    base: PreTrainedModel, settings: ModelSettings, model_type: str, seed: int
) -> tuple[nn.Module, tuple[str, ...]]:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = settings.target_modules or default_target_modules(model_type)
    config = LoraConfig(
        # SEQ_CLS makes peft train and save the head ("classifier"/"score") as modules_to_save
        task_type=TaskType.SEQ_CLS if settings.train_head else None,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(targets),
        fan_in_fan_out=model_type in FAN_IN_FAN_OUT,
    )
    torch.manual_seed(seed)  # LoRA A factors are the only per-build random draw
    try:
        with warnings.catch_warnings():  # peft's own deprecation chatter, not ours to act on
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(base, config)
    except ValueError as exc:  # peft: no module matched the targets
        raise ModelError(f"LoRA targets {targets} on {model_type!r}: {exc}") from exc
    if not trainable_parameters(model):
        raise ModelError(f"LoRA targets {targets} matched no module of {model_type!r}")
    return model, tuple(targets)


def _place(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to ``device``; frozen weights to ``dtype``, trainable ones stay float32."""
    model.to(device)
    if dtype == torch.float32:
        return
    for param in model.parameters():
        if not param.requires_grad:
            param.data = param.data.to(dtype)


def build_model(settings: ModelSettings, labels: Sequence[str], *, seed: int = 0) -> ModelBundle:
    """Build tokenizer + LoRA-wrapped classifier for ``labels`` on the configured device."""
    if len(labels) < 2:
        raise ModelError(f"a classifier needs at least 2 labels, got {list(labels)}")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    tokenizer = _load_tokenizer(settings)
    base = _load_base(settings, tokenizer, labels)
    model_type = str(base.config.model_type)
    model, targets = _attach_lora(base, settings, model_type, seed)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    _place(model, device, dtype)
    model.train()
    return ModelBundle(
        model=model,
        tokenizer=tokenizer,
        device=device,
        compute_dtype=dtype,
        settings=settings,
        labels=tuple(labels),
        model_type=model_type,
        target_modules=targets,
    )


def model_fingerprint(
    settings: ModelSettings,
    labels: Sequence[str],
    template: Any,
    template_version: int | str | None = None,
) -> str:
    """sha256 hex of what makes two processes' trainable states interchangeable.

    Covers the base model identity (name; for random-init models the config overrides and
    base_seed), the LoRA config, the head flag, the ordered label set and the prompt template.
    ``template`` is a template object with ``name`` and ``version`` attributes, or its name
    with ``template_version`` given. Device, dtype and threads are deliberately left out: a GPU
    server and CPU clients share one federation.
    """
    if template_version is None:
        template_name, template_version = str(template.name), template.version
    else:
        template_name = str(template)
    identity = _identity(settings, labels, template_name, template_version)
    return _digest(identity)


def _identity(
    settings: ModelSettings, labels: Sequence[str], template_name: str, template_version: Any
) -> dict[str, Any]:
    return {
        "model": settings.name,
        "random_init": settings.random_init,
        "config_overrides": dict(sorted(settings.config_overrides.items()))
        if settings.random_init
        else {},
        "base_seed": settings.base_seed,
        "lora": {
            "r": settings.lora_r,
            "alpha": settings.lora_alpha,
            "dropout": settings.lora_dropout,
            "target_modules": sorted(settings.target_modules or ()) or "default",
            "train_head": settings.train_head,
        },
        "labels": list(labels),
        "template": {"name": template_name, "version": str(template_version)},
    }


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# Which fields of the fingerprint's identity make up each part a mismatch can be blamed on.
FINGERPRINT_PARTS: Mapping[str, tuple[str, ...]] = {
    "base_model": ("model", "random_init", "config_overrides", "base_seed"),
    "lora": ("lora",),
    "labels": ("labels",),
    "template": ("template",),
}


def fingerprint_parts(
    settings: ModelSettings, labels: Sequence[str], template: Any
) -> dict[str, str]:
    """A short hash per part of `model_fingerprint` (Hello's fingerprint_parts), so a
    mismatch can say which part differs: base_model, lora (r, alpha, targets, head), labels
    (the task), template (name@version)."""
    identity = _identity(settings, labels, str(template.name), template.version)
    return {
        part: _digest({key: identity[key] for key in keys})[:16]
        for part, keys in FINGERPRINT_PARTS.items()
    }
