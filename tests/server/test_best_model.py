"""The best-by-validation model: kept only when better, written 0600, resumed after a restart."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from fedllm_server.best import INFO_FILE, STATE_FILE, BestByValidation


def _state(value: float) -> dict[str, np.ndarray]:
    return {"head.weight": np.full((2, 3), value, dtype=np.float32)}


def test_a_better_version_replaces_the_kept_one(tmp_path: Path) -> None:
    best = BestByValidation(tmp_path)
    best.offer(1, 0.6, _state(1.0))
    assert best.offer(2, 0.7, _state(2.0))
    assert load_file(str(tmp_path / STATE_FILE))["head.weight"][0, 0] == 2.0


def test_a_worse_or_equal_version_is_not_kept(tmp_path: Path) -> None:
    best = BestByValidation(tmp_path)
    best.offer(1, 0.7, _state(1.0))
    kept = [best.offer(2, 0.7, _state(2.0)), best.offer(3, 0.5, _state(3.0))]
    assert kept == [False, False]
    assert json.loads((tmp_path / INFO_FILE).read_text())["version"] == 1


def test_a_restarted_server_never_replaces_a_better_model_with_a_worse_one(tmp_path: Path) -> None:
    BestByValidation(tmp_path).offer(4, 0.8, _state(4.0))
    assert not BestByValidation(tmp_path).offer(5, 0.75, _state(5.0))


def test_best_model_files_are_private(tmp_path: Path) -> None:
    BestByValidation(tmp_path).offer(1, 0.6, _state(1.0))
    modes = {stat.S_IMODE((tmp_path / name).stat().st_mode) for name in (STATE_FILE, INFO_FILE)}
    assert modes == {0o600}
