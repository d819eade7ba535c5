"""The client's local model and the worker thread that trains it off the event loop.

Rules: every call that touches torch (build, step, evaluate, state copies) runs on ONE dedicated
worker thread (``WorkerThread``), so the event loop keeps answering heartbeats and broadcasts
while a step runs, and model state is never touched by two threads at once. ``LocalModel`` is
what the session needs from a model; two implementations: ``LoraModel`` (the real LoRA model on
the client's IoT-23 partition, in lora_model.py) and ``SyntheticModel`` (no model: a fixed
random update shaped like the global model, for measuring the federation's own overhead).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from fedllm_client.settings import ClientSettings, SyntheticSettings
from fedllm_core.data import load_client_data
from fedllm_core.model import model_fingerprint

TensorDict = dict[str, np.ndarray]
T = TypeVar("T")


@dataclass(frozen=True)
class StepResult:
    loss: float
    layer_grad_norms: dict[str, float]  # layer -> L2 norm of this step's gradient


class LocalModel(Protocol):
    """What the session asks of a model. All methods run on the worker thread."""

    fingerprint: str
    sample_count: int  # n_i: local training samples
    persists_tensors: bool  # False: tensors are derivable, state.json keeps counters only
    device: str  # where the work runs (for the energy meter)

    def layers(self) -> dict[str, list[str]]: ...  # layer -> tensor names
    def set_state(self, tensors: TensorDict) -> None: ...
    def state(self) -> TensorDict: ...
    def delta(self, base: TensorDict) -> TensorDict: ...  # θ_i − θ^base, float32
    def step(self) -> StepResult: ...
    def validate(self) -> dict[str, float]: ...  # metrics on the local validation set V_i
    def evaluate_test(self, max_samples: int) -> dict[str, float]: ...
    def optimizer_state(self) -> TensorDict | None: ...
    def load_optimizer_state(self, state: TensorDict) -> None: ...
    def reset_optimizer(self) -> None: ...


class WorkerThread:
    """One thread for all model work; ``await run(fn, *args)`` from the event loop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedllm-trainer")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        ctx = contextvars.copy_context()  # structlog's bound client_id / model_version
        call = functools.partial(ctx.run, fn, *args)
        job = asyncio.get_running_loop().run_in_executor(self._pool, call)
        # A submitted job always runs to the end, even if the awaiting task is cancelled (a
        # lost connection): half the model work done, the other half silently dropped, would
        # leave the state inconsistent. Later jobs queue behind it on the one thread.
        return await asyncio.shield(job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class SyntheticModel:
    """Training replaced by a fixed random update: the federation's cost without the model's.

    The update is drawn once (seeded) with the names and shapes of the first global model, and
    every "training" returns that same delta, so no per-round allocation or compute is measured.
    Its identity (fingerprint, sample count) is the configured model's and data's, so a server
    with the same [model]/[data] settings accepts it; the update's size is the global model's.
    """

    persists_tensors = False
    device = "cpu"

    def __init__(self, settings: SyntheticSettings, fingerprint: str, sample_count: int) -> None:
        self.settings = settings
        self.fingerprint = fingerprint
        self.sample_count = sample_count
        self._update: TensorDict | None = None
        self._base: TensorDict = {}

    def layers(self) -> dict[str, list[str]]:
        return {name: [name] for name in self._base}

    def set_state(self, tensors: TensorDict) -> None:
        self._base = tensors
        if self._update is None or self._update.keys() != tensors.keys():
            self._update = self._draw(tensors)

    def _draw(self, like: TensorDict) -> TensorDict:
        rng = np.random.default_rng(self.settings.seed)
        update = {}
        for name, array in like.items():
            drawn = rng.standard_normal(array.shape, dtype=np.float32)
            drawn *= np.float32(self.settings.scale)  # in place: no second copy of 100 MB
            update[name] = drawn
        return update

    def state(self) -> TensorDict:
        return self._base  # the update is not materialised into a model: nothing reads it

    def delta(self, base: TensorDict) -> TensorDict:
        assert self._update is not None, "delta before the first global model"
        return self._update

    def step(self) -> StepResult:
        if self.settings.step_time_s:
            time.sleep(self.settings.step_time_s)
        return StepResult(loss=0.0, layer_grad_norms={})

    def validate(self) -> dict[str, float]:
        return {}

    def evaluate_test(self, max_samples: int) -> dict[str, float]:
        return {}

    def optimizer_state(self) -> TensorDict | None:
        return None

    def load_optimizer_state(self, state: TensorDict) -> None:
        return None

    def reset_optimizer(self) -> None:
        return None


def build_local_model(settings: ClientSettings) -> LocalModel:
    """The configured model (slow for LoRA: loads data and weights; call on the worker)."""
    if settings.trainer == "synthetic":
        data = load_client_data(settings.data)  # labels, template, n_i: no model is built
        fingerprint = model_fingerprint(settings.model, data.label_names, data.template)
        return SyntheticModel(settings.synthetic, fingerprint, data.sample_count)
    from fedllm_client.lora_model import LoraModel  # data + weights only when really training

    return LoraModel.build(settings)
