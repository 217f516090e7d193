"""Metric families for one event loop: plain-number children without locks, collected by prometheus-client."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# --- families ------------------------------------------------------------------------------------
#
# prometheus_client's Counter/Histogram take a lock and check their arguments on every call (about
# 1.5 and 3 µs on this machine). The counting here happens on one thread — the event loop's — once
# per batch, so the families below keep plain numbers in slotted objects (an add is ~0.1 µs) and
# turn them into prometheus_client metric families only when scraped. Scrapes run in another
# thread: they read a copy of the children (a C-level copy, atomic under the GIL), and a
# histogram's count is the sum of its buckets, so a scrape never sees them disagree. Methods called
# from several threads (delivery reports, opt-outs) take a lock of their own in :class:`Metrics`.


class _Value:
    """One series of a counter or gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (counters: never negative; the callers ensure it)."""
        self.value += amount

    def set(self, value: float) -> None:
        """Gauges: set the value."""
        self.value = value


class _Observed:
    """One series of a histogram: a count per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value into the first bucket whose upper bound is at least ``value``."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Family:
    """A metric family with labels, registered as a collector; children created once per label set."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str],
        *,
        registry: CollectorRegistry,
        buckets: tuple[float, ...] = (),
    ) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = list(labelnames)
        self.buckets = buckets
        self._le = [floatToGoString(b) for b in buckets]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def labels(self, *values: str) -> Any:
        """The child for these label values (created at zero the first time)."""
        child = self._children.get(values)
        if child is None:
            child = self._children.setdefault(values, _Observed(self.buckets) if self.buckets else _Value())
        return child

    def _family(self) -> Any:
        if self.kind == "histogram":
            return HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        return CounterMetricFamily(self.name, self.doc, labels=self.labelnames)

    def describe(self) -> list[Metric]:
        """The family without samples (the registry checks names with it)."""
        return [self._family()]

    def collect(self) -> list[Metric]:
        """The family with every child's current values."""
        fam = self._family()
        for values, child in list(self._children.items()):
            if isinstance(child, _Observed):
                cumulative, buckets = 0, []
                for le, n in zip([*self._le, "+Inf"], list(child.counts), strict=True):
                    cumulative += n
                    buckets.append((le, float(cumulative)))
                fam.add_metric(list(values), buckets=buckets, sum_value=child.sum)
            else:
                fam.add_metric(list(values), child.value)
        return [fam]


class _Counter(_Family):
    kind = "counter"


class _Gauge(_Family):
    kind = "gauge"


class _Histogram(_Family):
    kind = "histogram"
