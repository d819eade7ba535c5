"""What a ``classify`` run reports when it ends: counts, labels, latency and throughput.

Rules: pure accounting (the caller measures time and passes it in). Latency is per flow, from
the moment its line was read to its verdict (batch wait + model), warm-up flows excluded.
Throughput is flows per second of the whole run (``flows_per_s``, reading and writing
included) and of model time alone (``model_flows_per_s``). The text-cache hits say how much
of it the cache answered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedllm_client.alerts import Verdict, severity


class Summary:
    def __init__(self, labels: Sequence[str]) -> None:
        self.latencies_ms: list[float] = []
        self.flows = self.malformed = self.correct = self.labelled = 0
        self.alerts = self.batches = self.cache_hits = self.batch1_flows = 0
        self.by_label: Counter[str] = Counter({name: 0 for name in labels})
        self.by_severity: Counter[str] = Counter()
        self.model_s = self.batch1_s = 0.0
        self.largest_batch = 0
        self.stopped_by = "eof"
        self.started = time.monotonic()

    def add_batch(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.model_s += seconds
        self.largest_batch = max(self.largest_batch, size)
        if size == 1:
            self.batch1_flows += 1
            self.batch1_s += seconds

    def add_flow(self, verdict: Verdict, latency_ms: float, truth: str | None) -> None:
        self.flows += 1
        self.latencies_ms.append(latency_ms)
        self.by_label[verdict.label] += 1
        if verdict.alert:
            self.alerts += 1
            self.by_severity[severity(verdict)[0]] += 1
        if truth is not None:
            self.labelled += 1
            self.correct += int(truth == verdict.label)

    def as_dict(self, warmup: int, device: str) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        out: dict[str, Any] = {
            "flows": self.flows,
            "malformed": self.malformed,
            "alerts": self.alerts,
            "by_label": dict(self.by_label),
            "alerts_by_severity": dict(self.by_severity),
            "latency_ms": self._latency(warmup),
            "flows_per_s": round(self.flows / wall, 1) if wall > 0 else 0.0,
            "model_flows_per_s": round(self.flows / self.model_s, 1) if self.model_s else 0.0,
            "flows_per_min_batch1": (
                round(60 * self.batch1_flows / self.batch1_s, 1) if self.batch1_s else None
            ),
            "batches": self.batches,
            "mean_batch": round(self.flows / self.batches, 2) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "cache_hits": self.cache_hits,
            "stopped_by": self.stopped_by,
            "wall_s": round(wall, 3),
            "device": device,
            "torch_threads": torch.get_num_threads(),
        }
        if self.labelled:
            out["accuracy"] = round(self.correct / self.labelled, 4)
        return out

    def _latency(self, warmup: int) -> dict[str, Any]:
        excluded = warmup if len(self.latencies_ms) > warmup else 0  # too few: time them all
        timed = np.array(self.latencies_ms[excluded:])
        return {
            "median": round(float(np.median(timed)), 3) if timed.size else None,
            "p95": round(float(np.percentile(timed, 95)), 3) if timed.size else None,
            "requests": int(timed.size),
            "warmup_excluded": excluded,
        }
