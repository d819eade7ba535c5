"""A flood of refused peers or failed accepts must not flood the log: `LogThrottle` lets out at
most `burst` events per window and reports what it held back. Time is passed in."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from fedllm_proto.admission import LogThrottle
from fedllm_server.door import Refusals
from fedllm_server.metrics_log import MetricsLog


def _allowed(throttle: LogThrottle, times: list[float]) -> list[float]:
    return [now for now in times if throttle.allow(now)]


def test_the_first_event_goes_out() -> None:
    assert LogThrottle(10.0).allow(0.0)


def test_one_event_per_window_with_a_burst_of_one() -> None:
    times = [0.0, 1.0, 9.9, 10.0, 15.0, 20.5]
    assert _allowed(LogThrottle(10.0), times) == [0.0, 10.0, 20.5]


def test_a_burst_goes_out_then_the_rest_is_held() -> None:
    assert _allowed(LogThrottle(10.0, burst=3), [0.0, 0.1, 0.2, 0.3, 0.4]) == [0.0, 0.1, 0.2]


def test_the_next_window_reports_what_was_held_back() -> None:
    throttle = LogThrottle(10.0)
    _allowed(throttle, [0.0, 1.0, 2.0, 3.0])
    assert (throttle.allow(10.0), throttle.suppressed) == (True, 3)


def test_a_second_event_in_the_same_window_reports_nothing_held() -> None:
    throttle = LogThrottle(10.0, burst=2)
    _allowed(throttle, [0.0, 1.0, 2.0, 10.0])  # 2.0 held; 10.0 reports it
    assert (throttle.allow(11.0), throttle.suppressed) == (True, 0)


def test_ten_thousand_failures_in_a_minute_log_at_most_a_burst_per_window() -> None:
    throttle = LogThrottle(10.0, burst=10)
    times = [i * 0.006 for i in range(10_000)]  # 60 s of failures, 6 ms apart
    assert len(_allowed(throttle, times)) == 60


def test_every_failure_is_either_logged_or_counted() -> None:
    throttle = LogThrottle(10.0, burst=2)
    reported = 0
    for now in [i * 0.5 for i in range(100)] + [1000.0]:
        if throttle.allow(now):
            reported += 1 + throttle.suppressed
    assert reported == 101


def test_refusals_log_one_event_per_window_and_count_them_all(tmp_path: Path) -> None:
    refusals = Refusals(MetricsLog(tmp_path / "metrics.jsonl"))
    with capture_logs() as logs:
        for i in range(1000):
            refusals("tls_handshake_failed", f"127.0.0.2:{i}", now=i * 0.01)  # 10 s of them
        refusals("tls_handshake_failed", "127.0.0.2:9999", now=10.0)
    events = [e for e in logs if e["event"] == "connections_refused"]
    assert [(e["suppressed"], e["totals"]) for e in events] == [
        (0, {"tls_handshake_failed": 1}),
        (999, {"tls_handshake_failed": 1001}),
    ]
