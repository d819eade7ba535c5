"""Live flow classification with the client's current model: ``fedllm client classify``.

Rules: the model is the one in the client's state directory (the latest global model by
default, or the client's own local model), rebuilt from the same settings as the daemon, so
labels, template and fingerprint agree. Input is a Zeek conn.log (labelled or not; ``--follow``
tails a growing log like ``tail -F``, reopening it when rotated or truncated) or an IoT-23 CSV.
Flows are classified in batches of what has arrived: a batch goes to the model when it holds
``batch_size`` flows, when the reader has nothing more right now, or when its oldest flow has
waited ``max_wait_ms``, so a flow's latency is bounded while a burst is classified at batched
speed. The forward pass runs on a copy of the model with the LoRA factors folded into its
weights (W + s·BA, computed once per loaded model in float32): the same function without the
adapter branch in every targeted layer. Results are remembered per prompt text (the model is
deterministic, traffic repeats) until the model changes. Each flow becomes one ECS document
(alerts.py); SIGTERM/SIGINT classify what was read, then the summary (stats.py) goes to stderr
as one JSON object. A malformed line is counted and reported with its line number, never
fatal. When following, a new model written by the daemon is picked up between batches.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import numpy as np
import structlog
import torch

from fedllm_client.alerts import Context, decide, flow_document
from fedllm_client.settings import ClientSettings
from fedllm_client.state import MANIFEST, StateError, StateStore
from fedllm_client.stats import Summary
from fedllm_core import systemd
from fedllm_core.data import ZeekStream, prepare_data, read_flow_file, template_for
from fedllm_core.errors import DataError
from fedllm_core.hostcontext import HostWindow, with_context
from fedllm_core.model import ModelBundle, build_model, load_trainable_state
from fedllm_core.training import encode_split, predict_logits
from fedllm_core.version import package_version

log = structlog.get_logger("fedllm.client.classify")
Record = dict[str, Any]
STATUS_EVERY_S = 10.0  # systemd STATUS= refresh while running


class FlowClassifier:
    """The state directory's model, over batches of flows, with a per-text result cache."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.template = template_for(settings.data)
        self.labels = prepare_data(settings.data).label_names
        self.bundle = build_model(settings.model, self.labels, seed=settings.seed)
        self.bundle.model.eval()
        self.serving = self.bundle  # what the forward pass runs: a merged copy once loaded
        self._manifest = settings.state_dir / MANIFEST
        self._loaded_mtime = -1.0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_hits = 0
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
        self.serving = merged_for_inference(self.bundle)
        self._cache.clear()  # its results were the old model's
        self._loaded_mtime, self.version = mtime, state.base_version
        log.info("model_loaded", which=self.settings.inference.which, version=state.base_version)
        return True

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(N, C) class probabilities; each distinct unseen text goes through the model once."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh = dict(zip(missing, self._forward(missing), strict=True)) if missing else {}
        self.cache_hits += len(texts) - len(missing)  # flows that cost no forward pass
        out = np.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])  # (N, C)
        self._remember(fresh)
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        max_length = self.settings.model.max_length
        split = encode_split(self.bundle.tokenizer, texts, None, max_length)
        logits = torch.from_numpy(predict_logits(self.serving, split, batch_size=len(texts)))
        return torch.softmax(logits, dim=1).numpy()  # (N, C)

    def _remember(self, fresh: dict[str, np.ndarray]) -> None:
        size = self.settings.inference.cache_size
        if size == 0:
            return
        for text, probs in fresh.items():
            self._cache[text] = probs
            if len(self._cache) > size:
                self._cache.popitem(last=False)


def merged_for_inference(bundle: ModelBundle) -> ModelBundle:
    """``bundle`` with a copy of its model whose LoRA factors are folded into the frozen
    weights: per targeted layer one matmul instead of three plus peft's wrapper (on the
    default model at batch 64, the forward pass costs about two thirds). Only for float32
    weights: folding a float32 update into bfloat16 weights would round it, changing answers,
    so a bfloat16 model is served as it is."""
    from peft import PeftModel  # loaded already: build_model attached the adapter with it

    adapter = bundle.model
    if bundle.compute_dtype != torch.float32 or not isinstance(adapter, PeftModel):
        return bundle
    merged = copy.deepcopy(adapter).merge_and_unload()
    merged.eval()
    return dataclasses.replace(bundle, model=merged)


def zeek_lines(path: Path, follow: bool, poll_s: float) -> Iterator[tuple[int, str]]:
    """(line number, line) of a Zeek log; with ``follow`` wait for more, survive rotation.

    Line number 0 is an idle tick while following: nothing more to read right now (the caller
    classifies what it holds and may reload its model). It comes before the wait, not after."""
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
        yield 0, ""
        time.sleep(poll_s)  # EOF, or half a line: wait for the writer
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


def _records(
    path: Path, follow: bool, poll_s: float, summary: Summary, host_context_s: float | None
) -> Iterator[Record | None]:
    """Flow records of ``path`` (None: nothing more to read right now), each with its host
    context when ``host_context_s`` is set: a whole file as training computes it, a followed
    log by one window over the lines as they are read."""
    if not follow and (path.suffix in (".csv", ".gz") or path.name.endswith(".csv.gz")):
        table, report = read_flow_file(path)
        summary.malformed += report.malformed
        for problem in report.problems:
            log.warning("flow_malformed", where=str(problem))
        if host_context_s is not None:
            table = with_context(table, host_context_s)
        yield from (table.record(i) for i in range(len(table)))
        return
    stream = ZeekStream()
    hosts = HostWindow(host_context_s) if host_context_s is not None else None
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
            yield hosts.annotate(record) if hosts is not None else record


class StopSignal:
    """SIGTERM/SIGINT set a flag: the run classifies what it read, then summarises."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *_: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.name is None:
            self.name = signal.Signals(signum).name
            systemd.notify("STOPPING=1")


class ClassifyRun:
    """One ``classify`` run: read, batch, classify, write documents, account."""

    def __init__(self, settings: ClientSettings, out: IO[str], *, alerts_only: bool) -> None:
        self.settings = settings
        self.inference = settings.inference
        self.classifier = FlowClassifier(settings)
        self.out = out
        self.alerts_only = alerts_only
        self.summary = Summary(self.classifier.labels)
        self.pending: list[tuple[Record, float]] = []  # (record, monotonic time it was read)
        self._pinged = time.monotonic()
        self._status_at = 0.0

    def run(self, path: Path, follow: bool, stop: StopSignal) -> None:
        systemd.notify("READY=1\nSTATUS=classifying")
        poll_s, window_s = self.inference.poll_interval_s, self.settings.data.host_context_s
        for record in _records(path, follow, poll_s, self.summary, window_s):
            if record is not None:
                self.pending.append((record, time.monotonic()))
            if record is None or self._batch_due():
                self.flush()
            if record is None:
                self.classifier.reload()
                self._tick()
            if stop.name is not None:
                break
        self.flush()
        self.summary.stopped_by = stop.name or "eof"

    def _batch_due(self) -> bool:
        if len(self.pending) >= self.inference.batch_size:
            return True
        waited_ms = (time.monotonic() - self.pending[0][1]) * 1000 if self.pending else 0.0
        return waited_ms >= self.inference.max_wait_ms

    def flush(self) -> None:
        """Classify every pending flow in one batch and write its documents."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        texts = [self.classifier.template(record) for record, _ in batch]
        hits = self.classifier.cache_hits
        started = time.perf_counter()
        probs = self.classifier.probabilities(texts)  # (B, C)
        done = time.monotonic()
        self.summary.add_batch(len(batch), time.perf_counter() - started)
        self.summary.cache_hits += self.classifier.cache_hits - hits
        ctx = self._context()
        now = dt.datetime.now(dt.UTC)
        for (record, read_at), row in zip(batch, probs, strict=True):
            self._write(record, row, ctx, (done - read_at) * 1000, now)
        self.out.flush()
        self._tick()

    def _write(
        self, record: Record, probs: np.ndarray, ctx: Context, ms: float, now: dt.datetime
    ) -> None:
        verdict = decide(probs, self.classifier.labels, ctx.threshold)
        truth = _truth(record, self.classifier.labels) if self._labelled_task else None
        self.summary.add_flow(verdict, ms, truth)
        if self.alerts_only and not verdict.alert:
            return
        doc = flow_document(record, verdict, ctx, latency_ms=ms, now=now, true_label=truth)
        self.out.write(json.dumps(doc) + "\n")  # plain types only (alerts.py)

    @property
    def _labelled_task(self) -> bool:
        return self.settings.data.task == "binary"

    def _context(self) -> Context:
        return Context(
            threshold=self.inference.threshold,
            model_version=self.classifier.version,
            which=self.inference.which,
            observer=self.settings.client_name,
            version=package_version(),
        )

    def _tick(self) -> None:
        """Keep systemd informed: watchdog pings and a STATUS= line now and then."""
        now = time.monotonic()
        interval = systemd.watchdog_interval_s()
        if interval is not None and now - self._pinged >= interval / 2:
            systemd.notify("WATCHDOG=1")
            self._pinged = now
        if now - self._status_at >= STATUS_EVERY_S:
            s = self.summary
            systemd.notify(
                f"STATUS=model v{self.classifier.version}: {s.flows} flows, {s.alerts} alerts"
            )
            self._status_at = now


def run_classify(
    settings: ClientSettings,
    path: Path,
    *,
    output: Path | None = None,
    follow: bool = False,
    alerts_only: bool | None = None,
) -> int:
    """Classify every flow of ``path``: documents as JSON lines, the summary on stderr."""
    inference = settings.inference
    alerts = inference.alerts_only if alerts_only is None else alerts_only
    out_path = output or inference.output
    out = out_path.open("a", encoding="utf-8") if out_path else sys.stdout
    log.info(
        "classify_started",
        input=str(path),
        follow=follow,
        alerts_only=alerts,
        threshold=inference.threshold,
        batch_size=inference.batch_size,
    )
    try:
        with StopSignal() as stop:
            job = ClassifyRun(settings, out, alerts_only=alerts)
            job.run(path, follow, stop)
    finally:
        if out is not sys.stdout:
            out.close()
    result = job.summary.as_dict(inference.warmup, str(job.classifier.bundle.device))
    print(json.dumps({"event": "classify_summary", **result}), file=sys.stderr, flush=True)
    return 0


def _truth(record: Record, labels: tuple[str, ...]) -> str | None:
    """The record's own label when it has one the model knows (binary task: benign/malicious)."""
    raw = str(record.get("label", "")).strip()
    for name in labels:
        if raw and name.lower() == raw.lower():
            return name
    return None
