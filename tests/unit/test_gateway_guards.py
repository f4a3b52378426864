"""Per-client limits of the gateway, stepped with a fake clock."""

from __future__ import annotations

from fakes import FakeClock
from cynode.roles.gateway import guards as guards_module
from cynode.roles.gateway.guards import ClientGuards


def make(clock=None, **changes) -> ClientGuards:
    settings = {"max_connections": 2, "rate": 5.0, "header_timeout": 1.0, "body_timeout": 1.0, **changes}
    return ClientGuards(clock=clock or FakeClock(), **settings)


def test_connections_are_capped_per_address_and_freed_when_closed():
    guards = make()
    assert guards.connection_opened("10.0.0.1") and guards.connection_opened("10.0.0.1")
    assert not guards.connection_opened("10.0.0.1")
    assert guards.connection_opened("10.0.0.2")  # another address has its own allowance
    guards.connection_closed("10.0.0.1")
    assert guards.connection_opened("10.0.0.1")
    for _ in range(3):
        guards.connection_closed("10.0.0.2")
    assert guards.open_connections("10.0.0.2") == 0 and guards.refused_connections == 1


def test_a_burst_of_twice_the_rate_then_the_rate_and_a_retry_after_that_is_honest():
    clock = FakeClock()
    guards = make(clock)
    assert all(guards.retry_after("a") is None for _ in range(10))  # burst = 2 x 5/s
    wait = guards.retry_after("a")
    assert wait is not None and 0.19 < wait <= 0.2
    assert guards.retry_after("b") is None  # per address
    clock.now += wait
    assert guards.retry_after("a") is None and guards.retry_after("a") is not None


def test_zero_rate_is_no_limit():
    guards = make(rate=0)
    assert all(guards.retry_after("a") is None for _ in range(10_000))


def test_the_state_kept_per_address_is_bounded(monkeypatch):
    monkeypatch.setattr(guards_module, "MAX_TRACKED", 100)
    guards = make()
    for i in range(1000):
        guards.retry_after(f"10.0.{i // 256}.{i % 256}")
    assert guards.tracked() == 100
