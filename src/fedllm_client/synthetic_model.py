"""``SyntheticModel``: training replaced by a fixed random update (benchmarks of the federation).

Rules: a ``LocalModel`` (local_model.py) with no model behind it; it runs on the worker thread
like the real one, and is built by ``build_local_model`` (learner.py) for ``trainer = "synthetic"``.
"""

from __future__ import annotations

import time

import numpy as np

from fedllm_client.local_model import StepResult
from fedllm_client.settings import SyntheticSettings
from fedllm_proto.codec import TensorDict


class SyntheticModel:
    """Training replaced by a fixed random update: the federation's cost without the model's.

    The update is drawn once (seeded) with the names and shapes of the first global model, and
    every "training" returns that same delta, so no per-round allocation or compute is measured.
    Its identity (fingerprint, sample count) is the configured model's and data's, so a server
    with the same [model]/[data] settings accepts it; the update's size is the global model's.
    """

    persists_tensors = False
    device = "cpu"

    def __init__(
        self,
        settings: SyntheticSettings,
        fingerprint: str,
        sample_count: int,
        fingerprint_parts: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.fingerprint = fingerprint
        self.fingerprint_parts = fingerprint_parts or {}
        self.sample_count = sample_count
        self._update: TensorDict | None = None
        self._base: TensorDict = {}

    def layers(self) -> dict[str, list[str]]:
        return {name: [name] for name in self._base}

    def set_state(self, tensors: TensorDict) -> None:
        self._base = tensors
        if self._update is None or self._update.keys() != tensors.keys():
            self._update = self._draw(tensors)

    def anchor(self) -> None:
        pass  # no training, so nothing to pull toward

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
