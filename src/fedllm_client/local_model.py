"""What the client's learner asks of a local model: the ``LocalModel`` contract and ``StepResult``.

Rules: every method runs on the one worker thread (worker_thread.py), so model state is never
touched by two threads at once. Two implementations: ``LoraModel`` (lora_model.py, the real
LoRA model on the client's IoT-23 partition) and ``SyntheticModel`` (synthetic_model.py, no
model: a fixed random update shaped like the global model, for measuring the federation's own
overhead). This module imports neither, so both can import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fedllm_proto.codec import TensorDict


@dataclass(frozen=True)
class StepResult:
    loss: float
    layer_grad_norms: dict[str, float]  # layer -> L2 norm of this step's gradient


class LocalModel(Protocol):
    """What the learner asks of a model. All methods run on the worker thread."""

    fingerprint: str
    fingerprint_parts: dict[str, str]  # part -> short hash, for a mismatch to name (Hello)
    sample_count: int  # n_i: local training samples
    persists_tensors: bool  # False: tensors are derivable, state.json keeps counters only
    device: str  # where the work runs (for the energy meter)

    def layers(self) -> dict[str, list[str]]: ...  # layer -> tensor names
    def set_state(self, tensors: TensorDict) -> None: ...
    def anchor(self) -> None: ...  # the current state is the global model training starts from
    def state(self) -> TensorDict: ...
    def delta(self, base: TensorDict) -> TensorDict: ...  # θ_i − θ^base, float32
    def step(self) -> StepResult: ...
    def validate(self) -> dict[str, float]: ...  # metrics on the local validation set V_i
    def evaluate_test(self, max_samples: int) -> dict[str, float]: ...
    def optimizer_state(self) -> TensorDict | None: ...
    def load_optimizer_state(self, state: TensorDict) -> None: ...
    def reset_optimizer(self) -> None: ...
