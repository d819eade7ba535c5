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


def measure_latency(
    bundle: ModelBundle,
    texts: Sequence[str],
    *,
    requests: int = DEFAULT_REQUESTS,
    warmup: int = DEFAULT_WARMUP,
    batch_size: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Latency (batch 1) and throughput (batched) over ``texts`` (cycled if there are few)."""
    if not texts:
        raise ValueError("latency needs at least one flow text")
    pool = list(texts)
    singles = [[pool[i % len(pool)]] for i in range(warmup + requests)]
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        one = _timed_requests(bundle, singles)[warmup:]
        chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        _timed_requests(bundle, chunks[:1])  # warm-up
        batched = _timed_requests(bundle, chunks)
    finally:
        model.train(was_training)
    per_flow_batched_ms = 1000.0 * sum(batched) / len(pool)
    return {
        "batch1_median_ms": 1000.0 * float(np.median(one)),
        "batch1_p95_ms": 1000.0 * float(np.percentile(one, 95)),
        "batch1_requests": len(one),
        "batched_ms_per_flow": per_flow_batched_ms,
        "batch_size": batch_size,
        "batched_flows": len(pool),
        "flows_per_min": 60000.0 / per_flow_batched_ms,
        "warmup_requests": warmup,
        "device": str(bundle.device),
        "compute_dtype": str(bundle.compute_dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }
