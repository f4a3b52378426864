"""Counters and histograms for the request path, cheap enough to touch for every token.

prometheus_client's own take a lock and walk several layers per observation (about 2 µs each); a
request through one node makes a dozen of them, plus one per token. These keep plain numbers that
only the event-loop thread updates, and a collector hands them to the same registry in the same
exposition format, so `/metrics`, Prometheus and `registry.get_sample_value` see ordinary
counters and histograms with the same names.

Contract: update them from the event-loop thread only (every role does; engines do not touch metrics).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["FastCounter", "FastHistogram"]


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class _HistogramChild:
    __slots__ = ("_bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self._bounds, value)] += 1
        self.count += 1
        self.sum += value


class _Family(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        self._default = None if labelnames else self._child(())

    def _make(self):
        raise NotImplementedError

    def _child(self, values: tuple[str, ...]):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._make()
        return child

    def labels(self, *values: str):
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        return self._child(tuple(str(v) for v in values))

    def describe(self) -> list:
        """The family without samples: the registry learns the names (for clashes, and for
        `restricted_registry`, which collects by name)."""
        return [self._family()]

    def _family(self):
        raise NotImplementedError


class FastCounter(_Family):
    def _make(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._default.inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for values, child in sorted(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class FastHistogram(_Family):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        super().__init__(name, documentation, labelnames)

    def _make(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._default.observe(value)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = self._family()
        for values, child in sorted(self._children.items()):
            cumulative, running = [], 0
            for bound, count in zip((*self.bounds, float("inf")), child.buckets):
                running += count
                cumulative.append((floatToGoString(bound), running))
            family.add_metric(values, cumulative, child.sum)
        yield family

