"""The results.json contract shared by `fedllm experiment`, `fedllm baseline` and benchmarks.

Owns the document's shape, not how the numbers are obtained: builders elsewhere produce plain
dicts, ``check_results`` rejects anything that drifts from the documented contract (see
docs/experiment.md), and ``write_results`` / ``read_results`` are the only file I/O. A run's
``clients_avg`` is null for runs that have no clients (the baselines); every other documented key
is always present so readers never need ``.get``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
METRIC_KEYS = ("accuracy", "f1_macro", "f1_weighted", "precision", "recall")
RUN_KEYS = (
    "strategy",
    "central",
    "clients_avg",
    "rounds",
    "uploads",
    "bytes_up",
    "bytes_down",
    "wall_s",
    "latency_ms_per_flow",
    "flows_per_min",
    "latency",
    "energy",
    "history",
)
HISTORY_KEYS = ("version", "t_s", "central", "uploads", "bytes_up", "bytes_down")


class ResultsError(ValueError):
    """A results document does not follow the contract; the message names the offending key."""


def metric_block(values: Mapping[str, Any]) -> dict[str, float]:
    """The five contract metrics out of a wider metrics mapping (KeyError if one is missing)."""
    return {key: float(values[key]) for key in METRIC_KEYS}


def average_metrics(blocks: Sequence[Mapping[str, float]]) -> dict[str, float] | None:
    """Unweighted mean over clients: the paper's "client model (avg)" column."""
    if not blocks:
        return None
    return {key: sum(b[key] for b in blocks) / len(blocks) for key in METRIC_KEYS}


def _check_metrics(where: str, block: Any, *, nullable: bool = False) -> None:
    if block is None and nullable:
        return
    if not isinstance(block, Mapping):
        raise ResultsError(f"{where}: expected a metrics object, got {block!r}")
    for key in METRIC_KEYS:
        value = block.get(key)
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ResultsError(f"{where}.{key}: expected a number in [0, 1], got {value!r}")


def _check_number(where: str, value: Any, *, integer: bool = False) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if not ok or value < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise ResultsError(f"{where}: expected a non-negative number, got {value!r}")


def _check_history(where: str, history: Any) -> None:
    if not isinstance(history, list):
        raise ResultsError(f"{where}: expected a list")
    for i, record in enumerate(history):
        missing = [key for key in HISTORY_KEYS if key not in record]
        if missing:
            raise ResultsError(f"{where}[{i}]: missing {missing}")
        _check_metrics(f"{where}[{i}].central", record["central"], nullable=True)


def check_run(where: str, run: Any) -> None:
    """Raise ResultsError unless ``run`` carries every contract key with a sane value."""
    if not isinstance(run, Mapping):
        raise ResultsError(f"{where}: expected an object")
    missing = [key for key in RUN_KEYS if key not in run]
    if missing:
        raise ResultsError(f"{where}: missing {missing}")
    _check_metrics(f"{where}.central", run["central"])
    _check_metrics(f"{where}.clients_avg", run["clients_avg"], nullable=True)
    for key in ("rounds", "uploads", "bytes_up", "bytes_down"):
        _check_number(f"{where}.{key}", run[key], integer=True)
    for key in ("wall_s", "latency_ms_per_flow", "flows_per_min"):
        _check_number(f"{where}.{key}", run[key])
    if not isinstance(run["energy"], Mapping) or not isinstance(run["latency"], Mapping):
        raise ResultsError(f"{where}: energy and latency must be objects")
    _check_history(f"{where}.history", run["history"])


def check_results(doc: Any) -> None:
    """Validate a whole results document (raises ResultsError naming the first problem)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("config"), Mapping):
        raise ResultsError("document: expected an object with a 'config' object")
    runs = doc.get("runs")
    if not isinstance(runs, list):
        raise ResultsError("runs: expected a list")
    for i, run in enumerate(runs):
        check_run(f"runs[{i}]", run)


def results_document(
    config: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], **extra: Any
) -> dict[str, Any]:
    """Assemble (and validate) a results document; ``extra`` keys (e.g. failures) ride along."""
    doc = {"schema": SCHEMA_VERSION, "config": dict(config), "runs": list(runs), **extra}
    check_results(doc)
    return doc


def write_results(path: Path, doc: Mapping[str, Any]) -> None:
    """Write atomically so a reader (or a Ctrl-C) never sees half a file."""
    check_results(doc)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_results(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    check_results(doc)
    return dict(doc)


def privacy_record(aggregations: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The accountant's report after the last aggregation that has one (central DP: δ, method,
    budget, aggregations, federation_epsilon, epsilon per client), or None when DP was off."""
    for record in reversed(aggregations):
        accountant = (record.get("privacy") or {}).get("accountant")
        if accountant:
            return dict(accountant)
    return None


def run_record(
    strategy: str,
    central: Mapping[str, Any],
    latency: Mapping[str, Any],
    energy: Mapping[str, Any],
    *,
    wall_s: float,
    clients_avg: Mapping[str, float] | None = None,
    rounds: int = 0,
    uploads: int = 0,
    bytes_up: int = 0,
    bytes_down: int = 0,
    history: Sequence[Mapping[str, Any]] = (),
    privacy: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One contract run; the headline latency figures are lifted out of ``latency``.
    ``privacy``: `privacy_record` of the server's aggregations (None: DP off, or a baseline)."""
    return {
        "strategy": strategy,
        "central": metric_block(central),
        "clients_avg": None if clients_avg is None else metric_block(clients_avg),
        "rounds": rounds,
        "uploads": uploads,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "wall_s": round(wall_s, 3),
        "latency_ms_per_flow": float(latency.get("batch1_median_ms", 0.0)),
        "flows_per_min": float(latency.get("flows_per_min", 0.0)),
        "latency": dict(latency),
        "energy": dict(energy),
        "history": list(history),
        "privacy": None if privacy is None else dict(privacy),
        **extra,
    }
