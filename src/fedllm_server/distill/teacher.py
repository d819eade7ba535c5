"""The cloud (teacher) model: trained once on the rows the cloud may see, cached in state_dir.

Rules: the teacher is trained at start-up only when no cache matches; the cache file is
`<state_dir>/distill/teacher-<key>.safetensors` (0600), its trainable state. The key is a
sha256 of everything that shapes that state: the teacher's model identity (its fingerprint
plus `max_length`), template, training settings, steps, seed and the training texts and
labels themselves. So a restart reuses the teacher, and any changed setting or data trains a
new one (older teacher files are removed). Device, dtype and threads are not in the key, as in
the federation fingerprint. A cache file that cannot be read is logged and trained again.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from fedllm_core.errors import ModelError
from fedllm_core.model import (
    ModelBundle,
    build_model,
    load_trainable_state,
    model_fingerprint,
    trainable_state,
)
from fedllm_core.prompts import get_template
from fedllm_core.tensorfile import write_safetensors
from fedllm_core.training import LocalTrainer, encode_split, predict_logits
from fedllm_server.distill.settings import DistillSettings
from fedllm_server.distill.transfer import TeacherData

log = structlog.get_logger("fedllm.server.distill")
PREFIX = "teacher-"


@dataclass(frozen=True)
class TeacherReport:
    """How the teacher came to be, for the `teacher_trained` / `teacher_restored` events."""

    source: str  # "trained" | "cache"
    key: str
    rows: int
    steps: int
    loss: float | None  # mean loss of the last 10 steps (trained only)
    seconds: float


class Teacher:
    """A built teacher bundle with its state loaded; `logits` scores teacher-template texts."""

    def __init__(self, bundle: ModelBundle, batch_size: int) -> None:
        self.bundle, self.batch_size = bundle, batch_size

    def logits(self, texts: list[str]) -> np.ndarray:
        """(N, C) float32 logits, in `texts` order."""
        split = encode_split(self.bundle.tokenizer, texts, None, self.bundle.settings.max_length)
        return predict_logits(self.bundle, split, self.batch_size)


def teacher_key(settings: DistillSettings, data: TeacherData) -> str:
    """sha256 hex binding a teacher state to its settings and its training data."""
    model = settings.model
    identity = {
        "fingerprint": model_fingerprint(model, data.label_names, get_template(settings.template)),
        "max_length": model.max_length,
        "train": settings.teacher_train.model_dump(mode="json"),
        "steps": settings.teacher_steps,
        "seed": settings.seed,
        "data": data.digest(),
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def open_teacher(
    settings: DistillSettings, data: TeacherData, cache_dir: Path
) -> tuple[Teacher, TeacherReport]:
    """The teacher from the cache when its key matches, else trained now and cached."""
    started = time.perf_counter()
    bundle = build_model(settings.model, data.label_names, seed=settings.seed)
    key = teacher_key(settings, data)
    path = cache_dir / f"{PREFIX}{key[:32]}.safetensors"
    teacher = Teacher(bundle, settings.teacher_train.eval_batch_size)
    if _restore(bundle, path):
        report = TeacherReport("cache", key, len(data.texts), 0, None, _since(started))
        log.info("teacher_restored", key=key[:32], rows=report.rows, seconds=report.seconds)
        return teacher, report
    loss = _train(bundle, settings, data)
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_safetensors(path, trainable_state(bundle.model), mode=0o600)
    for stale in cache_dir.glob(f"{PREFIX}*.safetensors"):  # older settings' teachers
        if stale != path:
            stale.unlink(missing_ok=True)
    steps, seconds = settings.teacher_steps, _since(started)
    report = TeacherReport("trained", key, len(data.texts), steps, loss, seconds)
    log.info(
        "teacher_trained",
        key=key[:32],
        rows=report.rows,
        steps=report.steps,
        loss=round(loss, 4),
        seconds=report.seconds,
    )
    return teacher, report


def _restore(bundle: ModelBundle, path: Path) -> bool:
    """Load a cached state; False (logged) when there is none or it is unusable."""
    if not path.is_file():
        return False
    import safetensors.numpy

    try:
        load_trainable_state(bundle.model, safetensors.numpy.load_file(str(path)))
    except (OSError, ModelError, safetensors.SafetensorError) as exc:  # torn or foreign: retrain
        log.warning("teacher_cache_unusable", path=str(path), error=str(exc))
        return False
    return True


def _train(bundle: ModelBundle, settings: DistillSettings, data: TeacherData) -> float:
    """`teacher_steps` AdamW steps on the teacher's rows; the mean loss of the last ten."""
    split = encode_split(bundle.tokenizer, data.texts, data.labels, settings.model.max_length)
    trainer = LocalTrainer(bundle, split, settings.teacher_train, seed=settings.seed)
    losses = [trainer.step().loss for _ in range(settings.teacher_steps)]
    return statistics.fmean(losses[-10:])


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
