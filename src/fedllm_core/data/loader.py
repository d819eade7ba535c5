"""From ``DataSettings`` to what a client trains on and what the server evaluates on.

Pipeline (every step seeded, so every host derives the same result on its own):
load flows -> label set -> optional stratified subsample (``max_rows``) -> stratified 70/20/10
split -> partition of train+validation rows over clients -> prompt texts.
Strata are (fine class, capture) throughout. Loaded tables are cached per process, keyed by
the files' paths, sizes and modification times.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import structlog

from fedllm_core.data.labels import BENIGN, encode_labels, fine_classes, label_names
from fedllm_core.data.partition import partition_indices
from fedllm_core.data.settings import DataSettings
from fedllm_core.data.splits import (
    Splits,
    capture_split,
    split_indices,
    strata_ids,
    stratified_subsample,
)
from fedllm_core.data.table import FlowTable, IndexArray, ObjectArray
from fedllm_core.data.zeek import LoadReport, expand_paths, read_flow_files
from fedllm_core.hostcontext import CONTEXT_TOKENS, with_context, with_host_context
from fedllm_core.prompts import Template, choose_template, render

SHIPPED_DIR = Path(__file__).resolve().parent / "iot23"
SHIPPED_FILES = (
    "iot23_full_captures.csv.gz",
    "iot23_pooled_lpeifeng.csv.gz",
    "iot23_pooled_sushanth.csv.gz",
)
# Independent random streams for the steps, so changing one step does not shift another.
_SUBSAMPLE, _SPLIT, _PARTITION, _VAL_CAP, _TEST_CAP, _LOCAL_VAL = range(1, 7)
log = structlog.get_logger(__name__)


def _seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def shipped_paths() -> list[Path]:
    """The IoT-23 files shipped inside the package (see iot23/ATTRIBUTION.md)."""
    return [SHIPPED_DIR / name for name in SHIPPED_FILES]


@lru_cache(maxsize=4)
def _load_cached(key: tuple[tuple[str, int, int], ...]) -> tuple[FlowTable, LoadReport]:
    return read_flow_files([Path(name) for name, _, _ in key])


def _files_key(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    files = expand_paths(list(paths)) if paths else shipped_paths()
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@lru_cache(maxsize=4)
def _context_cached(key: tuple[tuple[str, int, int], ...], window_s: float) -> FlowTable:
    return with_context(_load_cached(key)[0], window_s)


def load_flows(
    paths: Sequence[Path] = (), *, host_context_s: float | None = None
) -> tuple[FlowTable, LoadReport]:
    """Load flow files/folders (empty: the shipped IoT-23 copy), with each row's host context
    over ``host_context_s`` seconds when given (computed on every loaded row, before any
    subsample: an edge host sees all of its network's traffic). Cached; do not mutate."""
    key = _files_key(paths)
    table, report = _load_cached(key)
    if host_context_s is not None:
        table = _context_cached(key, host_context_s)
    if report.malformed:
        log.warning(
            "flows_malformed_lines",
            malformed=report.malformed,
            first=[str(p) for p in report.problems[:5]],
        )
    return table, report


@dataclass(frozen=True, eq=False)
class PreparedData:
    """The rows in use (after ``max_rows``), their class ids, the label set and the split."""

    flows: FlowTable
    labels: IndexArray  # class id per row of ``flows``
    label_names: tuple[str, ...]
    splits: Splits  # indices into ``flows``
    strata: IndexArray  # (fine class, capture) id per row
    report: LoadReport


def prepare_data(data: DataSettings) -> PreparedData:
    """Load, label, subsample and split as ``data`` says (the common start of every consumer)."""
    flows, report = load_flows(data.paths, host_context_s=data.host_context_s)
    names = tuple(label_names(data.task, flows, min_class_count=data.min_class_count))
    fine = fine_classes(flows)
    strata = strata_ids(fine, flows.captures)
    if data.split == "capture":
        flows, strata, splits = _capture_rows(data, flows, strata, fine != BENIGN)
    else:
        if data.max_rows is not None and data.max_rows < len(flows):
            keep = stratified_subsample(strata, data.max_rows, _seed(data.seed, _SUBSAMPLE))
            flows, strata = flows.take(keep), strata[keep]
        splits = split_indices(strata, _seed(data.seed, _SPLIT))
    return PreparedData(
        flows=flows,
        labels=encode_labels(flows, data.task, names),
        label_names=names,
        splits=splits,
        strata=strata,
        report=report,
    )


def _capture_rows(
    data: DataSettings, flows: FlowTable, strata: IndexArray, malicious: np.ndarray
) -> tuple[FlowTable, IndexArray, Splits]:
    """Split by whole capture, then subsample only the training and validation rows.

    The test captures stay whole: every flow of a capture never trained on is scored
    (cheaply, as distinct texts; see ``load_eval_data``).
    """
    # the raw seed: consecutive seeds are consecutive folds (every capture tested once)
    whole = capture_split(flows.captures, malicious, data.seed, holdout=data.holdout_captures)
    dev = np.concatenate([whole.train, whole.val])
    if data.max_rows is not None and data.max_rows < len(dev):
        dev = dev[stratified_subsample(strata[dev], data.max_rows, _seed(data.seed, _SUBSAMPLE))]
    keep = np.sort(np.concatenate([dev, whole.test]))
    kept = np.zeros(len(flows), bool)
    kept[keep] = True

    def renumber(rows: IndexArray) -> IndexArray:
        return np.searchsorted(keep, rows[kept[rows]]).astype(np.int64)

    splits = Splits(train=renumber(whole.train), val=renumber(whole.val), test=renumber(whole.test))
    return flows.take(keep), strata[keep], splits


def template_for(data: DataSettings) -> Template:
    """The prompt template ``data`` selects (``auto`` respects ``max_prompt_tokens``), followed
    by the host context when ``host_context_s`` is set (its words count against the budget)."""
    if data.host_context_s is None:
        return choose_template(data.template, max_tokens=data.max_prompt_tokens)
    budget = data.max_prompt_tokens
    base = choose_template(
        data.template, max_tokens=None if budget is None else budget - CONTEXT_TOKENS
    )
    return with_host_context(base, data.host_context_s)


def client_rows(prepared: PreparedData, data: DataSettings) -> tuple[IndexArray, IndexArray]:
    """This client's (train, validation) row indices into ``prepared.flows``."""
    if data.split == "capture":
        return _client_rows_by_capture(prepared, data)
    train, val = prepared.splits.train, prepared.splits.val
    rows = np.concatenate([train, val])
    blocks = np.concatenate([np.zeros(len(train), np.int64), np.ones(len(val), np.int64)])
    parts = partition_indices(
        data.partition,
        data.num_partitions,
        labels=prepared.labels[rows],
        groups=prepared.flows.captures[rows],
        blocks=blocks,
        seed=_seed(data.seed, _PARTITION),
        alpha=data.dirichlet_alpha,
    )
    mine = parts[data.partition_index]
    my_train = np.sort(rows[mine[blocks[mine] == 0]])
    my_val = np.sort(rows[mine[blocks[mine] == 1]])
    return my_train, _cap(my_val, prepared.strata, data.val_max, _seed(data.seed, _VAL_CAP))


def _client_rows_by_capture(
    prepared: PreparedData, data: DataSettings
) -> tuple[IndexArray, IndexArray]:
    """Capture split: clients share the training captures; each validates on its own traffic.

    The validation captures are the server's (held out by capture, for model selection); a
    client, like an edge host, can only hold out part of what it sees: a stratified 20 % of its
    own rows becomes its V_i (at least one row).
    """
    train = prepared.splits.train
    parts = partition_indices(
        data.partition,
        data.num_partitions,
        labels=prepared.labels[train],
        groups=prepared.flows.captures[train],
        seed=_seed(data.seed, _PARTITION),
        alpha=data.dirichlet_alpha,
    )
    mine = np.sort(train[parts[data.partition_index]])
    local = split_indices(prepared.strata[mine], _seed(data.seed, _LOCAL_VAL), (0.8, 0.2, 0.0))
    my_train, my_val = mine[local.train], mine[local.val]
    if not len(my_val) and len(my_train) > 1:
        my_train, my_val = my_train[1:], my_train[:1]
    return my_train, _cap(my_val, prepared.strata, data.val_max, _seed(data.seed, _VAL_CAP))


def _cap(rows: IndexArray, strata: IndexArray, limit: int | None, seed: int) -> IndexArray:
    if limit is None or len(rows) <= limit:
        return rows
    return rows[stratified_subsample(strata[rows], limit, seed)]


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's share: its train and validation texts and labels, and how they were made."""

    train_texts: list[str]
    train_labels: IndexArray
    val_texts: list[str]
    val_labels: IndexArray
    label_names: tuple[str, ...]
    template: Template
    partition_index: int
    num_partitions: int
    captures: tuple[str, ...]  # the IoT-23 captures this client's rows come from
    report: LoadReport

    @property
    def sample_count(self) -> int:
        """n_i: the number of local training samples (the FedAvg weight)."""
        return len(self.train_labels)


def load_client_data(data: DataSettings, template: Template | None = None) -> ClientData:
    """Client ``data.partition_index`` of ``data.num_partitions``: its train and validation data.

    ``template`` defaults to the one ``data`` selects (``template_for``).
    """
    chosen = template or template_for(data)
    prepared = prepare_data(data)
    train, val = client_rows(prepared, data)
    flows = prepared.flows
    return ClientData(
        train_texts=render(chosen, flows, train),
        train_labels=prepared.labels[train],
        val_texts=render(chosen, flows, val),
        val_labels=prepared.labels[val],
        label_names=prepared.label_names,
        template=chosen,
        partition_index=data.partition_index,
        num_partitions=data.num_partitions,
        captures=tuple(sorted(set(flows.captures[np.concatenate([train, val])].tolist()))),
        report=prepared.report,
    )


class EvalData(NamedTuple):
    """The held-out test split, deduplicated: each distinct (capture, text, class) once.

    A model's prediction depends on the text alone, so scoring each distinct item once and
    counting it ``weights`` times gives exactly the per-flow metrics, at a fraction of the cost
    (the 87k shipped flows are ~1,100 distinct compact@2 texts per capture set).
    """

    texts: list[str]
    labels: IndexArray
    label_names: tuple[str, ...]
    weights: IndexArray  # flows each item stands for (>= 1)
    captures: ObjectArray  # the capture each item's flows come from

    @property
    def flows(self) -> int:
        return int(self.weights.sum())


def load_eval_data(data: DataSettings, template: Template | None = None) -> EvalData:
    """The test split (capped to ``data.test_max`` rows, stratified) for central evaluation."""
    prepared = prepare_data(data)
    test = _cap(prepared.splits.test, prepared.strata, data.test_max, _seed(data.seed, _TEST_CAP))
    return _items(prepared, test, template or template_for(data))


def load_validation_data(data: DataSettings, template: Template | None = None) -> EvalData:
    """The whole validation split (by capture: the validation captures), for model selection
    and threshold choice; never used for training nor for the reported test figures."""
    prepared = prepare_data(data)
    return _items(prepared, prepared.splits.val, template or template_for(data))


def _items(prepared: PreparedData, rows: IndexArray, template: Template) -> EvalData:
    return distinct_items(
        render(template, prepared.flows, rows),
        prepared.labels[rows],
        prepared.flows.captures[rows],
        prepared.label_names,
    )


def distinct_items(
    texts: Sequence[str], labels: IndexArray, captures: ObjectArray, names: tuple[str, ...]
) -> EvalData:
    """Group flows by (capture, text, class); first-seen order, so the result is deterministic."""
    counts: dict[tuple[str, str, int], int] = {}
    for key in zip(captures.tolist(), texts, labels.tolist(), strict=True):
        counts[key] = counts.get(key, 0) + 1
    keys = list(counts)
    return EvalData(
        texts=[text for _, text, _ in keys],
        labels=np.array([label for _, _, label in keys], dtype=np.int64),
        label_names=names,
        weights=np.array(list(counts.values()), dtype=np.int64),
        captures=np.array([capture for capture, _, _ in keys], dtype=object),
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (to check the shipped copy against SOURCE.md)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
