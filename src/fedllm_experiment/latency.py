"""Inference latency and throughput of a classifier, measured the same way for every run.

What a figure means: one request is prompt text -> tokenizer -> model -> label, timed with
``perf_counter`` around the whole call (tokenisation included, because a deployed classifier pays
for it). Warm-up requests are run and discarded first (lazy allocations, caches). Batch size 1
gives the per-flow latency a live detector sees (median and p95 over many requests); a batched
pass gives throughput (flows per minute). Device and torch thread count are recorded beside the
numbers because they dominate them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedllm_core.model import ModelBundle

DEFAULT_REQUESTS = 200
DEFAULT_WARMUP = 10
DEFAULT_BATCH = 32


def _compute_context(bundle: ModelBundle) -> contextlib.AbstractContextManager[object]:
    """The bundle's compute dtype: frozen bf16 weights need autocast, as in training/evaluation."""
    if bundle.compute_dtype != torch.float32:
        return torch.autocast(bundle.device.type, dtype=bundle.compute_dtype)
    return contextlib.nullcontext()


def _classify(bundle: ModelBundle, texts: list[str]) -> torch.Tensor:
    batch = bundle.tokenizer(
        texts,
        truncation=True,
        max_length=bundle.settings.max_length,
        padding=True,
        return_tensors="pt",
    ).to(bundle.device)
    with torch.inference_mode(), _compute_context(bundle):
        logits = bundle.model(**batch).logits  # (B, C)
    return logits.argmax(dim=-1).cpu()  # .cpu() waits for the device, so the timing is complete


def _timed_requests(bundle: ModelBundle, batches: list[list[str]]) -> list[float]:
    seconds = []
    for texts in batches:
        start = time.perf_counter()
        _classify(bundle, texts)
        seconds.append(time.perf_counter() - start)
    return seconds


@dataclass
class LatencySample:
    """Raw timings, so several measurement passes (e.g. interleaved models) can be pooled."""

    batch1_s: list[float] = field(default_factory=list)  # one entry per timed single request
    batched_s: float = 0.0  # total time of the batched passes
    batched_flows: int = 0


def sample_latency(
    bundle: ModelBundle,
    texts: Sequence[str],
    *,
    requests: int = DEFAULT_REQUESTS,
    warmup: int = DEFAULT_WARMUP,
    batch_size: int = DEFAULT_BATCH,
    into: LatencySample | None = None,
) -> LatencySample:
    """Time ``requests`` single flows (after ``warmup``) and one batched pass over ``texts``."""
    if not texts:
        raise ValueError("latency needs at least one flow text")
    sample = into if into is not None else LatencySample()
    pool = list(texts)
    singles = [[pool[i % len(pool)]] for i in range(warmup + requests)]
    chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        sample.batch1_s += _timed_requests(bundle, singles)[warmup:]
        _timed_requests(bundle, chunks[:1])  # warm-up
        sample.batched_s += sum(_timed_requests(bundle, chunks))
        sample.batched_flows += len(pool)
    finally:
        model.train(was_training)
    return sample


def summarize(
    sample: LatencySample, bundle: ModelBundle, *, warmup: int, batch_size: int
) -> dict[str, Any]:
    """The figures results.json carries (milliseconds; throughput from the batched passes)."""
    one = np.asarray(sample.batch1_s) * 1000.0
    per_flow_batched_ms = 1000.0 * sample.batched_s / sample.batched_flows
    return {
        "batch1_median_ms": float(np.median(one)),
        "batch1_p95_ms": float(np.percentile(one, 95)),
        "batch1_requests": len(one),
        "batched_ms_per_flow": per_flow_batched_ms,
        "batch_size": batch_size,
        "batched_flows": sample.batched_flows,
        "flows_per_min": 60000.0 / per_flow_batched_ms,
        "warmup_requests": warmup,
        "device": str(bundle.device),
        "compute_dtype": str(bundle.compute_dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }


def measure_latency(
    bundle: ModelBundle,
    texts: Sequence[str],
    *,
    requests: int = DEFAULT_REQUESTS,
    warmup: int = DEFAULT_WARMUP,
    batch_size: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Latency (batch 1) and throughput (batched) over ``texts`` (cycled if there are few)."""
    sample = sample_latency(bundle, texts, requests=requests, warmup=warmup, batch_size=batch_size)
    return summarize(sample, bundle, warmup=warmup, batch_size=batch_size)
