"""Classification tasks over IoT-23 flows and their label sets.

Rules:
- ``binary``: ``Benign`` / ``Malicious`` from the ``label`` field, case-insensitive (IoT-23
  itself writes lowercase ``benign`` in the honeypot captures).
- ``multiclass``: ``Benign`` for benign rows, else the ``detailed-label`` (``Malicious`` when a
  malicious row has none). Rare classes are grouped: a malicious class with fewer than
  ``min_class_count`` rows in the loaded table becomes ``Other-Malicious``. The count is taken
  over the whole loaded table before any subsampling or split, so the label set does not depend
  on ``max_rows``, the seed or the partition.
- ``label_names`` is a stable order: ``Benign`` first, then the kept malicious classes sorted by
  name, then ``Other-Malicious`` if anything was grouped. Index = class id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from fedllm_core.data.table import FlowTable, IndexArray, ObjectArray
from fedllm_core.errors import DataError

Task = Literal["binary", "multiclass"]
BENIGN = "Benign"
MALICIOUS = "Malicious"
OTHER = "Other-Malicious"
DEFAULT_MIN_CLASS_COUNT = 100


def fine_classes(flows: FlowTable) -> ObjectArray:
    """Per row: ``Benign`` or the detailed malicious class, before any grouping."""
    benign = np.char.lower(flows.strings["label"].astype(str)) == "benign"
    detailed = flows.strings["detailed-label"]
    fine = np.where(detailed == "-", MALICIOUS, detailed).astype(object)
    fine[benign] = BENIGN
    return fine


def label_names(
    task: Task,
    flows: FlowTable | None = None,
    *,
    min_class_count: int = DEFAULT_MIN_CLASS_COUNT,
) -> list[str]:
    """The task's class names in class-id order (``flows`` is needed for ``multiclass``)."""
    if task == "binary":
        return [BENIGN, MALICIOUS]
    if task != "multiclass":
        raise DataError(f"unknown task {task!r} (binary or multiclass)")
    if flows is None:
        raise DataError("multiclass label names depend on the data: pass the loaded flows")
    counts = Counter(fine_classes(flows).tolist())
    counts.pop(BENIGN, None)
    kept = sorted(c for c, n in counts.items() if n >= min_class_count)
    grouped = len(kept) < len(counts)
    return [BENIGN, *kept, *([OTHER] if grouped else [])]


def encode_labels(flows: FlowTable, task: Task, names: Sequence[str]) -> IndexArray:
    """Class ids (int64) of every row under ``task``, using the order of ``names``."""
    index = {name: i for i, name in enumerate(names)}
    if task == "binary":
        raw = np.where(fine_classes(flows) == BENIGN, BENIGN, MALICIOUS)
    else:
        raw = fine_classes(flows)
    unknown = sorted(set(raw.tolist()) - set(index))
    if unknown and OTHER not in index:
        raise DataError(f"labels {unknown} are not among the task's classes {list(names)}")
    other = index.get(OTHER, -1)
    return np.fromiter((index.get(c, other) for c in raw.tolist()), np.int64, len(raw))
