"""Test doubles shared across tests."""

from __future__ import annotations


class FakeClock:
    """A clock tests move by hand: call it for the time, add to `now` to pass time."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
