"""Inference latency and throughput of a classifier, measured the same way for every run.

What a figure means: one request is prompt text -> tokenizer -> model -> label, timed with
``perf_counter`` around the whole call (tokenisation included, because a deployed classifier pays
for it). Warm-up requests are run and discarded first (lazy allocations, caches). Batch size 1
gives the per-flow latency a live detector sees (median and p95 over many requests); a batched
pass gives throughput (flows per minute). Device and torch thread count are recorded beside the
numbers because they dominate them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

DEFAULT_REQUESTS = 200
DEFAULT_WARMUP = 10
DEFAULT_BATCH = 32


def _classify(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: str) -> Any:
    batch = tokenizer(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    ).to(device)
    with torch.inference_mode():
        logits = model(**batch).logits
    return logits.argmax(dim=-1).cpu()  # .cpu() waits for the device, so the timing is complete


def _timed_requests(
    model: Any, tokenizer: Any, batches: list[list[str]], max_length: int, device: str
) -> list[float]:
    seconds = []
    for texts in batches:
        start = time.perf_counter()
        _classify(model, tokenizer, texts, max_length, device)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_latency(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    device: str = "cpu",
    requests: int = DEFAULT_REQUESTS,
    warmup: int = DEFAULT_WARMUP,
    batch_size: int = DEFAULT_BATCH,
) -> dict[str, Any]:
    """Latency (batch 1) and throughput (batched) over ``texts`` (cycled if there are few)."""
    if not texts:
        raise ValueError("latency needs at least one flow text")
    pool = list(texts)
    singles = [[pool[i % len(pool)]] for i in range(warmup + requests)]
    was_training = model.training
    model.eval()
    try:
        one = _timed_requests(model, tokenizer, singles, max_length, device)[warmup:]
        chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        _timed_requests(model, tokenizer, chunks[:1], max_length, device)  # warm-up
        batched = _timed_requests(model, tokenizer, chunks, max_length, device)
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
        "device": device,
        "torch_threads": torch.get_num_threads(),
    }
