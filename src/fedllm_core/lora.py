"""LoRA target modules per architecture, and the trainable state <-> numpy tensor dicts.

Rules: the trainable state θ (LoRA A/B factors + classifier head) is what goes over the wire.
Its names are PEFT's own state-dict names (``get_peft_model_state_dict``) without the
``base_model.model.`` prefix, so they do not depend on the device, the adapter name or the
process; arrays are float32, C-contiguous, owned (never views of a live parameter).
A "layer" (the unit of the gradient-norm trigger and of partial updates) is one LoRA-wrapped
module (its A and B factors) or one module of the trained head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from fedllm_core.errors import ModelError
from fedllm_proto.codec import TensorDict

# model_type -> modules LoRA wraps by default. Query/value projections only (LoRA paper's
# choice): the cheapest set that still adapts attention; more can be named in settings.
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "opt": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),  # fused q/k/v Conv1D
    "gpt_neo": ("q_proj", "v_proj"),
    "gpt_neox": ("query_key_value",),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "smollm3": ("q_proj", "v_proj"),
}
# Modules whose weights are (in, out) Conv1D rather than nn.Linear: LoRA must transpose.
FAN_IN_FAN_OUT = {"gpt2"}

_PEFT_PREFIX = "base_model.model."
_ADAPTER = "default"


def default_target_modules(model_type: str) -> tuple[str, ...]:
    try:
        return DEFAULT_TARGET_MODULES[model_type]
    except KeyError:
        raise ModelError(
            f"no default LoRA target modules for model_type {model_type!r}; "
            f"set model.target_modules (known defaults: {sorted(DEFAULT_TARGET_MODULES)})"
        ) from None


def wire_name(param_name: str) -> str:
    """PEFT parameter name -> stable wire name (adapter and wrapper parts removed)."""
    name = param_name.removeprefix(_PEFT_PREFIX)
    name = name.replace(f".modules_to_save.{_ADAPTER}.", ".")
    return name.replace(f".{_ADAPTER}.", ".")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Wire name -> live trainable parameter, in the model's registration order."""
    return {wire_name(n): p for n, p in model.named_parameters() if p.requires_grad}


def trainable_state(model: nn.Module) -> TensorDict:
    """Copy of θ as float32, C-contiguous CPU arrays keyed by wire name."""
    state: TensorDict = {}
    with torch.no_grad():
        for name, param in trainable_parameters(model).items():
            host = param.detach().to("cpu", torch.float32)
            state[name] = np.array(host.numpy(), dtype=np.float32, order="C", copy=True)
    return state


def load_trainable_state(
    model: nn.Module, state: Mapping[str, np.ndarray], *, partial: bool = False
) -> None:
    """Copy ``state`` into the live trainable parameters (in place, optimizer refs stay valid).

    With ``partial`` only the given names are written (a GSFS partial update); otherwise the
    names must be exactly the trainable set. Unknown names or wrong shapes raise ``ModelError``
    before anything is written.
    """
    params = trainable_parameters(model)
    unknown = sorted(set(state) - set(params))
    missing = [] if partial else sorted(set(params) - set(state))
    if unknown or missing:
        raise ModelError(f"trainable state mismatch: unknown {unknown[:5]}, missing {missing[:5]}")
    for name, array in state.items():
        expected = tuple(params[name].shape)
        if tuple(array.shape) != expected:
            raise ModelError(f"trainable state {name}: shape {array.shape}, model has {expected}")
    with torch.no_grad():
        for name, array in state.items():
            source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            params[name].copy_(source)  # copy_ casts/moves to the parameter's dtype and device


def layer_of(name: str) -> str:
    """Layer a wire name belongs to: the LoRA-wrapped module, or the head module."""
    for marker in (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B"):
        if marker in name:
            return name.split(marker, 1)[0]
    return name.rsplit(".", 1)[0] if "." in name else name


def layer_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Group wire names by layer (sorted layers, sorted names inside each)."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(layer_of(name), []).append(name)
    return dict(sorted(groups.items()))
