"""Reconnect backoff: exponential growth, cap, jitter bounds, reset, give-up."""

from __future__ import annotations

import random

from fedllm_client.backoff import Backoff, BackoffSettings


def test_delays_grow_exponentially_without_jitter() -> None:
    b = Backoff(BackoffSettings(initial_s=0.5, multiplier=2, jitter=0, max_s=100))
    assert [b.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_delay_is_capped() -> None:
    b = Backoff(BackoffSettings(initial_s=1, multiplier=10, jitter=0.5, max_s=3))
    assert max(b.next_delay() for _ in range(20)) <= 3


def test_jitter_stays_within_bounds() -> None:
    b = Backoff(BackoffSettings(initial_s=1, multiplier=1, jitter=0.2, max_s=10), random.Random(1))
    delays = [b.next_delay() for _ in range(200)]
    assert 0.8 <= min(delays) < max(delays) <= 1.2


def test_reset_starts_over() -> None:
    b = Backoff(BackoffSettings(initial_s=0.5, jitter=0))
    b.next_delay()
    b.next_delay()
    b.reset()
    assert b.next_delay() == 0.5


def test_max_attempts_exhausts() -> None:
    b = Backoff(BackoffSettings(max_attempts=2, jitter=0))
    b.next_delay()
    assert not b.exhausted()
    b.next_delay()
    assert b.exhausted()


def test_thousands_of_failed_attempts_keep_the_capped_delay() -> None:
    # a server down for a day: 2.0**1024 used to overflow and crash the daemon
    b = Backoff(BackoffSettings(initial_s=0.5, multiplier=2, jitter=0, max_s=30))
    delays = [b.next_delay() for _ in range(5000)]
    assert delays[-1] == 30 and delays[:3] == [0.5, 1.0, 2.0]


def test_a_multiplier_of_one_keeps_the_initial_delay() -> None:
    b = Backoff(BackoffSettings(initial_s=0.5, multiplier=1, jitter=0, max_s=30))
    assert {b.next_delay() for _ in range(2000)} == {0.5}
