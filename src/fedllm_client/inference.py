"""Live flow classification with the client's current model: ``fedllm client classify``.

Rules: the model is the one in the client's state directory (the latest global model by
default, or the client's own local model), rebuilt from the same settings as the daemon, so
labels, template and fingerprint agree. Input is a Zeek conn.log (labelled or not; ``--follow``
tails a growing log like ``tail -F``, reopening it when rotated or truncated) or an IoT-23 CSV.
Each flow is classified on its own (batch 1) and timed from its text to its label; the summary
(median/p95 latency, throughput, device, threads) is printed to stderr as one JSON object.
A malformed line is counted and reported with its line number, never fatal. When following,
a new global model written by the daemon is picked up between flows.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import structlog
import torch

from fedllm_client.settings import ClientSettings
from fedllm_client.state import MANIFEST, StateError, StateStore
from fedllm_core.data import ZeekStream, prepare_data, read_flow_file, template_for
from fedllm_core.errors import DataError
from fedllm_core.jsonlines import plain_json
from fedllm_core.model import build_model, load_trainable_state
from fedllm_core.training import encode_split, predict_logits

log = structlog.get_logger("fedllm.client.classify")
Record = dict[str, Any]


class FlowClassifier:
    """The state directory's model, one flow at a time."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.template = template_for(settings.data)
        self.labels = prepare_data(settings.data).label_names
        self.bundle = build_model(settings.model, self.labels, seed=settings.seed)
        self.bundle.model.eval()
        self._manifest = settings.state_dir / MANIFEST
        self._loaded_mtime = -1.0
        self.version = -1
        if not self.reload():
            raise DataError(
                f"no trained model in {settings.state_dir}: run the client daemon first"
            )

    def reload(self) -> bool:
        """Load the newest committed model if the state changed; True when one is loaded."""
        try:
            mtime = self._manifest.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == self._loaded_mtime:
            return True
        try:
            state = StateStore(self.settings.state_dir).load()
        except StateError as exc:  # the daemon is rewriting it right now: next time
            log.warning("state_unreadable", error=str(exc))
            return self._loaded_mtime >= 0
        if state is None:
            return False
        local = state.trained if state.trained is not None else state.local
        tensors = state.base if self.settings.inference.which == "global" else local
        if tensors is None:
            return False
        load_trainable_state(self.bundle.model, tensors)
        self._loaded_mtime, self.version = mtime, state.base_version
        log.info("model_loaded", which=self.settings.inference.which, version=state.base_version)
        return True

    def classify(self, record: Record) -> tuple[str, float]:
        """(label, probability) of one flow record, batch of one."""
        text = self.template(record)
        split = encode_split(self.bundle.tokenizer, [text], None, self.settings.model.max_length)
        logits = torch.from_numpy(predict_logits(self.bundle, split, batch_size=1)[0])  # (C,)
        probs = torch.softmax(logits, dim=0)
        best = int(probs.argmax())
        return self.labels[best], float(probs[best])


def zeek_lines(path: Path, follow: bool, poll_s: float) -> Iterator[tuple[int, str]]:
    """(line number, line) of a Zeek log; with ``follow`` wait for more, survive rotation.

    Line number 0 is an idle tick while following (the caller may reload its model)."""
    fh, inode, number = _open(path)
    partial = b""
    while True:
        chunk = fh.readline()
        partial += chunk
        if partial.endswith(b"\n") or (partial and not chunk and not follow):
            number += 1
            yield number, partial.decode("utf-8", errors="replace")
            partial = b""
            continue
        if not follow:
            fh.close()
            return
        time.sleep(poll_s)  # EOF, or half a line: wait for the writer
        yield 0, ""
        if _rotated(path, inode, fh.tell()):
            fh.close()
            fh, inode, number = _open(path)
            partial = b""


def _open(path: Path) -> tuple[IO[bytes], int, int]:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return fh, path.stat().st_ino, 0


def _rotated(path: Path, inode: int, position: int) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False  # between rotation and re-creation: keep waiting
    return stat.st_ino != inode or stat.st_size < position


class Summary:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.flows = self.malformed = self.correct = self.labelled = 0
        self.started = time.monotonic()

    def as_dict(self, warmup: int, device: str) -> dict[str, Any]:
        timed = np.array(self.latencies_ms[warmup:] or self.latencies_ms or [np.nan])
        elapsed = time.monotonic() - self.started
        out: dict[str, Any] = {
            "flows": self.flows,
            "malformed": self.malformed,
            "latency_ms": {
                "median": round(float(np.median(timed)), 3),
                "p95": round(float(np.percentile(timed, 95)), 3),
                "requests": int(timed.size),
                "warmup_excluded": min(warmup, len(self.latencies_ms)),
            },
            "flows_per_min_batch1": round(60_000 / float(np.mean(timed)), 1) if self.flows else 0.0,
            "wall_s": round(elapsed, 3),
            "device": device,
            "torch_threads": torch.get_num_threads(),
        }
        if self.labelled:
            out["accuracy"] = round(self.correct / self.labelled, 4)
        return out


def _records(path: Path, follow: bool, poll_s: float, summary: Summary) -> Iterator[Record | None]:
    """Flow records of ``path`` (None: an idle tick while following)."""
    if not follow and (path.suffix in (".csv", ".gz") or path.name.endswith(".csv.gz")):
        table, report = read_flow_file(path)
        summary.malformed += report.malformed
        for problem in report.problems:
            log.warning("flow_malformed", where=str(problem))
        yield from (table.record(i) for i in range(len(table)))
        return
    stream = ZeekStream()
    for number, line in zeek_lines(path, follow, poll_s):
        if number == 0:
            yield None
            continue
        try:
            record = stream.feed(line)
        except ValueError as exc:
            summary.malformed += 1
            log.warning("flow_malformed", file=str(path), line=number, reason=str(exc))
            continue
        if record is not None:
            yield record


def run_classify(
    settings: ClientSettings, path: Path, *, output: Path | None = None, follow: bool = False
) -> int:
    """Classify every flow of ``path``; predictions as JSON lines, summary on stderr."""
    classifier = FlowClassifier(settings)
    out_path = output or settings.inference.output
    out = out_path.open("a", encoding="utf-8") if out_path else sys.stdout
    summary = Summary()
    try:
        for record in _records(path, follow, settings.inference.poll_interval_s, summary):
            if record is None:
                classifier.reload()
                continue
            out.write(json.dumps(plain_json(_predict(classifier, record, summary))) + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a --follow run: still print the summary
    finally:
        if out is not sys.stdout:
            out.close()
    result = summary.as_dict(settings.inference.warmup, str(classifier.bundle.device))
    print(json.dumps({"event": "classify_summary", **result}), file=sys.stderr)
    return 0


def _predict(classifier: FlowClassifier, record: Record, summary: Summary) -> dict[str, Any]:
    t0 = time.perf_counter()
    label, prob = classifier.classify(record)
    ms = (time.perf_counter() - t0) * 1000
    summary.flows += 1
    summary.latencies_ms.append(ms)
    row: dict[str, Any] = {
        "uid": record.get("uid"),
        "ts": record.get("ts"),
        "orig_h": record.get("id.orig_h"),
        "resp_h": record.get("id.resp_h"),
        "label": label,
        "p": round(prob, 4),
        "latency_ms": round(ms, 3),
        "model_version": classifier.version,
    }
    truth = _truth(record, classifier.labels) if classifier.settings.data.task == "binary" else None
    if truth is not None:
        summary.labelled += 1
        summary.correct += int(truth == label)
        row["true_label"] = truth
    return row


def _truth(record: Record, labels: tuple[str, ...]) -> str | None:
    """The record's own label when it has one the model knows (binary task: benign/malicious)."""
    raw = str(record.get("label", "")).strip()
    for name in labels:
        if raw and name.lower() == raw.lower():
            return name
    return None
