"""The per-worker circuit breaker, stepped with a fake clock."""

from __future__ import annotations

from fakes import FakeClock
from cynode.roles.coordinator.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker




def breaker(clock, **kw) -> CircuitBreaker:
    return CircuitBreaker(BreakerSettings(window=60, min_requests=4, failure_rate=0.5, open_for=10, probes=1, **kw), clock)


def test_a_few_failures_below_the_minimum_volume_do_not_trip_it():
    b = breaker(FakeClock(0.0))
    for _ in range(3):
        b.record(False)
    assert b.state == CLOSED and b.allows()


def test_a_high_failure_rate_opens_it_and_an_open_breaker_allows_nothing():
    clock = FakeClock(0.0)
    b = breaker(clock)
    for ok in (True, False, True, False):
        b.record(ok)
    assert b.state == OPEN and not b.allows()
    clock.now = 9.9
    assert not b.allows()


def test_after_the_open_time_one_probe_goes_through_and_its_success_closes_it():
    clock = FakeClock(0.0)
    b = breaker(clock)
    for _ in range(4):
        b.record(False)
    clock.now = 10
    assert b.state == HALF_OPEN and b.allows()
    b.on_assign()
    assert not b.allows()  # only one probe at a time
    b.record(True)
    assert b.state == CLOSED and b.allows()


def test_a_failed_probe_opens_it_again_for_another_full_period():
    clock = FakeClock(0.0)
    b = breaker(clock)
    for _ in range(4):
        b.record(False)
    clock.now = 10
    b.on_assign()
    b.record(False)
    assert b.state == OPEN
    clock.now = 19
    assert not b.allows()
    clock.now = 20
    assert b.allows()


def test_old_failures_slide_out_of_the_window():
    clock = FakeClock(0.0)
    b = breaker(clock)
    b.record(False)
    b.record(False)
    clock.now = 61
    b.record(True)
    b.record(False)
    b.record(True)
    assert b.state == CLOSED  # 1 failure in 3 recent outcomes
