"""The Redis circuit breaker policy (service/redis_client.py), deterministically (an injected clock, no network)."""

from __future__ import annotations

import pytest

from service.redis_client import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kw: float) -> CircuitBreaker:
    options = {"window_s": 10.0, "min_failures": 5, "failure_rate": 0.5, "open_s": 1.0, **kw}
    return CircuitBreaker(clock=clock, **options)  # type: ignore[arg-type]


def test_one_late_reply_among_many_calls_does_not_open_the_breaker() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(100):
        b.success()
        clock.now += 0.001
    assert b.failure() is False
    assert not b.is_open and b.admit() == (True, 0.0)


def test_a_burst_of_late_replies_on_a_busy_loop_does_not_open_it_either() -> None:
    # c=32 on a stalled event loop: every in-flight call times out at once, among ~650 calls/s.
    clock = Clock()
    b = breaker(clock)
    for _ in range(2000):
        b.success()
        clock.now += 0.0015
    assert not any(b.failure() for _ in range(32))
    assert not b.is_open


def test_a_down_server_opens_it_after_min_failures() -> None:
    clock = Clock()
    b = breaker(clock)
    assert [b.failure() for _ in range(5)] == [False, False, False, False, True]
    assert b.is_open and b.trips == 1
    allowed, left = b.admit()
    assert not allowed and left == pytest.approx(1.0)


def test_failures_need_the_failure_rate_not_just_the_count() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(20):
        b.success()
    assert not any(b.failure() for _ in range(19))  # 19 of 39 < 50 %
    assert b.failure() is True  # 20 of 40


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(4):
        b.failure()
    clock.now += 11  # the window has moved on
    assert b.counts() == (0, 0)
    assert not any(b.failure() for _ in range(4))
    assert b.failure() is True


def test_open_breaker_admits_one_probe_after_open_s_and_its_success_closes_it() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(5):
        b.failure()
    clock.now += 0.5
    assert b.admit()[0] is False
    clock.now += 0.6
    assert b.admit() == (True, 0.0)  # the probe
    assert b.admit()[0] is False  # only one at a time
    assert b.success() is True
    assert not b.is_open and b.counts() == (1, 0)
    assert b.admit() == (True, 0.0)


def test_a_failed_probe_reopens_it_at_once() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(5):
        b.failure()
    clock.now += 1.1
    assert b.admit()[0] is True
    assert b.failure() is False  # already open: not a new trip
    assert b.is_open and b.trips == 1
    allowed, left = b.admit()
    assert not allowed and left == pytest.approx(1.0)


def test_bad_breaker_settings_are_refused() -> None:
    for bad in ({"window_s": 0}, {"min_failures": 0}, {"failure_rate": 0}, {"failure_rate": 1.5}, {"open_s": -1}):
        with pytest.raises(ValueError):
            breaker(Clock(), **bad)
