"""What the cloud may see: the teacher's labelled rows and the unlabelled transfer flows.

Rules: both come from the server's own `[data]` split (the same seeded rows every process
derives) and never from the test split, which scores both tiers. A transfer flow is one row
written twice, in the student's (edge) template and in the teacher's (cloud) one, so the
teacher's logits and the student's input describe the same connection; its label is never
read. Transfer flows are deduplicated by that pair of texts (the flows of one capture repeat a
few hundred texts thousands of times) and capped by a seeded draw. Pure: no torch, no I/O
beyond the data loader's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from fedllm_core.data import DataSettings, PreparedData, prepare_data, template_for
from fedllm_core.data.table import IndexArray
from fedllm_core.prompts import get_template, render
from fedllm_server.distill.settings import DistillSettings, Rows


@dataclass(frozen=True, eq=False)
class TeacherData:
    """The teacher's labelled training rows, in the teacher's template."""

    texts: list[str]
    labels: IndexArray  # (N,) int64 class ids
    label_names: tuple[str, ...]

    def digest(self) -> str:
        """sha256 of texts and labels: binds a cached teacher to the data it learned."""
        h = hashlib.sha256("\x1f".join(self.label_names).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        for text in self.texts:
            h.update(text.encode() + b"\0")
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class TransferSet:
    """Unlabelled flows: item i is the same connection in both templates."""

    student_texts: list[str]
    teacher_texts: list[str]

    def __len__(self) -> int:
        return len(self.student_texts)


def split_rows(prepared: PreparedData, which: Rows) -> IndexArray:
    """Row indices of `which` (never the test split)."""
    splits = prepared.splits
    parts: dict[Rows, list[IndexArray]] = {
        "validation": [splits.val],
        "train": [splits.train],
        "train_and_validation": [splits.train, splits.val],
    }
    return np.sort(np.concatenate(parts[which])).astype(np.int64)


def teacher_data(data: DataSettings, settings: DistillSettings) -> TeacherData:
    """The rows `settings.teacher_rows` names, labelled, in the teacher's template."""
    prepared = prepare_data(data)
    rows = split_rows(prepared, settings.teacher_rows)
    if not len(rows):
        raise ValueError(f"distill.teacher_rows = {settings.teacher_rows!r} selects no rows")
    texts = render(get_template(settings.template), prepared.flows, rows)
    return TeacherData(texts, prepared.labels[rows], prepared.label_names)


def transfer_set(data: DataSettings, settings: DistillSettings) -> TransferSet:
    """Distinct (edge text, cloud text) pairs of `settings.transfer_rows`, seeded cap."""
    prepared = prepare_data(data)
    rows = split_rows(prepared, settings.transfer_rows)
    edge, cloud = template_for(data), get_template(settings.template)
    both = zip(render(edge, prepared.flows, rows), render(cloud, prepared.flows, rows), strict=True)
    pairs = list(dict.fromkeys(both))
    if not pairs:
        raise ValueError(f"distill.transfer_rows = {settings.transfer_rows!r} selects no rows")
    if len(pairs) > settings.transfer_max:  # first-seen order, then a seeded draw: reproducible
        keep = np.random.default_rng([settings.seed, 7]).choice(
            len(pairs), settings.transfer_max, replace=False
        )
        pairs = [pairs[i] for i in np.sort(keep)]
    return TransferSet([s for s, _ in pairs], [t for _, t in pairs])
