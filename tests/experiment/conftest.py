"""Fixtures of the experiment tests: a synthetic but contract-complete results document."""

from __future__ import annotations

from typing import Any

import pytest

from fedllm_experiment.results import run_record

LATENCY = {
    "batch1_median_ms": 12.0,
    "batch1_p95_ms": 15.0,
    "batched_ms_per_flow": 3.0,
    "flows_per_min": 20000.0,
    "device": "cpu",
    "torch_threads": 1,
}


def metrics(acc: float) -> dict[str, float]:
    return {
        "accuracy": acc,
        "f1_macro": acc - 0.05,
        "f1_weighted": acc - 0.01,
        "precision": acc - 0.02,
        "recall": acc - 0.03,
    }


def fed_run(strategy: str, final_acc: float, rounds: int = 3) -> dict[str, Any]:
    hist = [
        {
            "version": v,
            "t_s": 10.0 * v,
            "central": metrics(final_acc - 0.1 / v),
            "uploads": 3 * v,
            "bytes_up": 1000 * v,
            "bytes_down": 2000 * v,
        }
        for v in range(1, rounds + 1)
    ]
    events = [
        {
            "t_s": float(i),
            "client_id": f"client-{i % 3 + 1}",
            "trigger": "max_silence",
            "bytes": 1000,
            "outcome": "accepted",
        }
        for i in range(9)
    ]
    return run_record(
        strategy,
        metrics(final_acc),
        LATENCY,
        {"joules": None, "cpu_s_total": 42.0},
        wall_s=30.0,
        clients_avg=metrics(final_acc - 0.02),
        rounds=rounds,
        uploads=9,
        bytes_up=9000,
        bytes_down=18000,
        history=hist,
        upload_events=events,
        test_flows=600,
    )


def document() -> dict[str, Any]:
    runs = [fed_run("fedavg", 0.90), fed_run("fedopt", 0.91), fed_run("gsfs", 0.93)]
    runs.append(run_record("gbt", metrics(0.99), LATENCY, {"cpu_seconds": 1.0}, wall_s=2.0))
    return {"schema": 1, "config": {"clients": 3, "rounds": 3, "model": "tiny"}, "runs": runs}


@pytest.fixture
def results_doc() -> dict[str, Any]:
    return document()
