"""results.json's `privacy` field: the accountant's report after the last aggregation."""

from __future__ import annotations

from fedllm_experiment.results import METRIC_KEYS, privacy_record, run_record

CENTRAL = dict.fromkeys(METRIC_KEYS, 0.5)
REPORT = {"delta": 1e-6, "method": "pld", "federation_epsilon": 4.9, "clients": {"c1": 4.9}}


def test_the_last_aggregation_with_a_report_gives_it() -> None:
    older = {"privacy": {"accountant": {**REPORT, "federation_epsilon": 1.0}}}
    refused_after = {"privacy": {}}
    assert privacy_record([older, {"privacy": {"accountant": REPORT}}, refused_after]) == REPORT


def test_dp_off_gives_none() -> None:
    assert privacy_record([{"privacy": {}}, {"version": 1}]) is None


def test_a_run_record_carries_it() -> None:
    run = run_record("fedavg", CENTRAL, {}, {}, wall_s=1.0, privacy=REPORT)
    assert run["privacy"] == REPORT


def test_a_run_without_dp_says_null() -> None:
    assert run_record("fedavg", CENTRAL, {}, {}, wall_s=1.0)["privacy"] is None
