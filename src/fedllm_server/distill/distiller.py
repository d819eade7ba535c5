"""FedDF-style server-side distillation of the cloud teacher into the global edge model.

Rules: the student is the federation's own model (the `[model]` settings, its own instance:
the evaluation thread holds the central one). Each distillation starts from the aggregated
θ^v, runs `steps` AdamW steps (fresh moments) of `kd_loss` against the teacher's logits on
the transfer flows, and returns the new trainable state; batches are a seeded draw keyed by
(seed, v). The teacher's logits are computed once at start-up (the teacher never changes). KD
runs in eval mode: no dropout, so no draw from torch's global generator, which other threads
share, and the result is a function of (θ^v, v, settings). Called from the engine thread only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
import torch

from fedllm_core.data import load_eval_data, stratified_subsample
from fedllm_core.lora import trainable_parameters
from fedllm_core.model import ModelBundle, build_model, load_trainable_state, trainable_state
from fedllm_core.prompts import get_template
from fedllm_core.training import EncodedSplit, autocast, encode_split, predict_logits
from fedllm_core.training import evaluate as evaluate_split
from fedllm_server.distill.hook import Refined
from fedllm_server.distill.kd import agreement, kd_loss
from fedllm_server.distill.settings import DistillSettings
from fedllm_server.distill.teacher import Teacher, TeacherReport, open_teacher
from fedllm_server.distill.transfer import teacher_data, transfer_set
from fedllm_server.settings import ServerSettings
from fedllm_server.tensors import TensorDict, l2_norm

log = structlog.get_logger("fedllm.server.distill")


class Distiller:
    """The engine's `Refiner`: θ^v -> θ^v distilled toward the teacher."""

    def __init__(
        self,
        settings: DistillSettings,
        student: ModelBundle,
        transfer: EncodedSplit,
        teacher_logits: np.ndarray,  # (N, C) float32, item i of `transfer`
    ) -> None:
        self.settings, self.student, self.transfer = settings, student, transfer
        self.teacher_logits = teacher_logits
        self._targets = torch.from_numpy(teacher_logits).to(student.device)  # (N, C)

    def refine(self, tensors: TensorDict, version: int) -> Refined | None:
        """Distil every `every_versions`-th version; leave the others as aggregated."""
        if version % self.settings.every_versions:
            return None
        return self.distil(tensors, version)

    def distil(self, tensors: TensorDict, version: int) -> Refined:
        """`steps` KD steps from `tensors`; the distilled state and its report."""
        started = time.perf_counter()
        model = self.student.model
        load_trainable_state(model, tensors)
        before = self.student_logits()
        params = list(trainable_parameters(model).values())
        optimizer = torch.optim.AdamW(params, lr=self.settings.lr, foreach=True)
        rng = np.random.default_rng([self.settings.seed, version])
        model.eval()  # see the module rules: deterministic, and no dropout in the targets' way
        try:
            for _ in range(self.settings.steps):
                loss = self._loss(self._draw(rng))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        finally:
            model.train()
        distilled = trainable_state(model)
        after = self.student_logits()
        report = self._report(tensors, distilled, before, after, time.perf_counter() - started)
        log.info("distilled", model_version=version, **report)
        return Refined(distilled, report)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        size = min(self.settings.batch_size, len(self.transfer))
        return np.sort(rng.choice(len(self.transfer), size, replace=False))  # (B,)

    def _loss(self, idx: np.ndarray) -> torch.Tensor:
        ids, mask, _ = self.transfer.batch(idx, self.student.device)  # (B, T) each
        with autocast(self.student):
            logits = self.student.model(input_ids=ids, attention_mask=mask).logits  # (B, C)
        targets = self._targets[torch.from_numpy(idx).to(self.student.device)]  # (B, C)
        return kd_loss(logits, targets, self.settings.temperature)

    def student_logits(self) -> np.ndarray:
        """(N, C) logits of the student's current state on the transfer flows."""
        return predict_logits(self.student, self.transfer, self.settings.batch_size)

    def full_kd_loss(self, student: np.ndarray) -> float:
        """kd_loss over every transfer flow for given (N, C) student logits."""
        pair = torch.from_numpy(student), torch.from_numpy(self.teacher_logits)
        return float(kd_loss(*pair, self.settings.temperature))

    def _report(
        self,
        start: TensorDict,
        end: TensorDict,
        before: np.ndarray,
        after: np.ndarray,
        seconds: float,
    ) -> dict[str, float | int]:
        return {
            "steps": self.settings.steps,
            "transfer": len(self.transfer),
            "temperature": self.settings.temperature,
            "kd_loss_before": round(self.full_kd_loss(before), 6),
            "kd_loss_after": round(self.full_kd_loss(after), 6),
            "agreement_before": round(agreement(before, self.teacher_logits), 6),
            "agreement_after": round(agreement(after, self.teacher_logits), 6),
            "step_norm": round(l2_norm({k: end[k] - start[k] for k in start}), 6),
            "seconds": round(seconds, 3),
        }


@dataclass(frozen=True)
class Opened:
    """A ready distiller and what its start-up did (the `teacher` metrics record)."""

    distiller: Distiller
    teacher: Teacher
    report: TeacherReport
    teacher_evaluation: dict[str, float]  # the cloud tier on the test split ({}: not asked)


def open_distiller(
    settings: ServerSettings, labels: Sequence[str], *, evaluate: bool = True
) -> Opened:
    """Teacher (cached or trained), its logits on the transfer flows, the student instance,
    and (``evaluate``) the teacher's test-split metrics.

    Blocking torch work of minutes on a first start: call it off the event loop.
    """
    distill, data = settings.distill, settings.data
    teacher_rows = teacher_data(data, distill)
    if tuple(teacher_rows.label_names) != tuple(labels):
        raise ValueError(f"teacher labels {teacher_rows.label_names} != federation's {labels}")
    teacher, report = open_teacher(distill, teacher_rows, settings.state_dir / "distill")
    pairs = transfer_set(data, distill)
    targets = teacher.logits(pairs.teacher_texts)  # (N, C)
    student = build_model(settings.model, labels, seed=settings.seed)
    split = encode_split(student.tokenizer, pairs.student_texts, None, settings.model.max_length)
    evaluation = evaluate_teacher(teacher, settings) if evaluate else {}
    return Opened(Distiller(distill, student, split, targets), teacher, report, evaluation)


def evaluate_teacher(teacher: Teacher, settings: ServerSettings) -> dict[str, float]:
    """The teacher's metrics on the test split (teacher template; the central cap)."""
    items = load_eval_data(settings.data, get_template(settings.distill.template))
    texts, labels, weights = items.texts, np.asarray(items.labels), np.asarray(items.weights)
    cap = settings.evaluation.max_samples  # as CentralModel: distinct test items, stratified
    if cap is not None and len(labels) > cap:
        keep = np.sort(stratified_subsample(labels, cap, settings.seed))
        texts, labels, weights = [texts[i] for i in keep], labels[keep], weights[keep]
    bundle = teacher.bundle
    length = bundle.settings.max_length
    split = encode_split(bundle.tokenizer, texts, labels, length, weights=weights)
    metrics: dict[str, Any] = evaluate_split(bundle, split, settings.evaluation.batch_size)
    return {k: float(v) for k, v in metrics.items()}
