"""Latency figures: warm-up excluded, p95 never below the median, device and threads recorded."""

from __future__ import annotations

from typing import Any

import pytest

from fedllm_core.model import ModelSettings, build_model
from fedllm_experiment.latency import measure_latency

TEXTS = ["tcp - SF saf/hf 443 dynamic 3ms 0/0b 4/2p 172/92ip", "udp - S0 d/- 53 dynamic 1s 40/0b"]


@pytest.fixture(scope="module")
def timed() -> dict[str, Any]:
    settings = ModelSettings(name="bert", random_init=True, torch_threads=1)
    bundle = build_model(settings, ["Benign", "Malicious"])
    return measure_latency(bundle, TEXTS * 5, requests=12, warmup=3)


def test_only_timed_requests_are_counted(timed: dict[str, Any]) -> None:
    assert (timed["batch1_requests"], timed["warmup_requests"]) == (12, 3)


def test_p95_is_not_below_the_median(timed: dict[str, Any]) -> None:
    assert timed["batch1_p95_ms"] >= timed["batch1_median_ms"] > 0


def test_throughput_comes_from_the_batched_pass(timed: dict[str, Any]) -> None:
    assert timed["flows_per_min"] == pytest.approx(60000 / timed["batched_ms_per_flow"])


def test_device_dtype_and_threads_are_recorded(timed: dict[str, Any]) -> None:
    assert {"device", "compute_dtype", "torch_threads"} <= timed.keys()
    assert timed["torch_threads"] == 1
