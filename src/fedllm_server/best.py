"""The best-by-validation global model: model selection that never looks at the test split.

A global version whose macro-F1 on the validation split (by capture: captures neither trained
nor tested on) beats every earlier version's is written to
``<state_dir>/best-by-validation.safetensors``, with ``best-by-validation.json`` beside it
(version, validation macro-F1). Both are written atomically, mode 0600, from the evaluation
thread. Later versions can get worse (training on a few captures overfits them); this keeps the
one to deploy. A restarted server resumes from the JSON, so a worse model never replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import structlog

from fedllm_core.files import atomic_write
from fedllm_core.tensorfile import write_safetensors

STATE_FILE = "best-by-validation.safetensors"
INFO_FILE = "best-by-validation.json"
log = structlog.get_logger(__name__)


class BestByValidation:
    """Keeps the global state with the highest validation macro-F1 seen so far."""

    def __init__(self, state_dir: Path) -> None:
        self.state_path, self.info_path = state_dir / STATE_FILE, state_dir / INFO_FILE
        self.version, self.f1 = -1, -1.0
        if self.info_path.exists():
            info = json.loads(self.info_path.read_text())
            self.version, self.f1 = int(info["version"]), float(info["val_f1_macro"])

    def offer(self, version: int, f1: float, state: Mapping[str, np.ndarray]) -> bool:
        """Keep ``state`` if it beats the best so far; True when it was kept."""
        if f1 <= self.f1:
            return False
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(self.state_path, state, mode=0o600)
        info = {"version": version, "val_f1_macro": f1}
        atomic_write(self.info_path, json.dumps(info).encode(), mode=0o600)
        self.version, self.f1 = version, f1
        log.info("best_model_kept", model_version=version, val_f1_macro=round(f1, 4))
        return True
