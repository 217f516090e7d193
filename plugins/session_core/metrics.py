"""Per-bind Prometheus metrics of a gateway on the session core, read from its binds on each scrape.

Families (labels ``gateway`` and ``bind``, the bind's index — bounded by the gateway's ``binds``
option, at most 64; receipts also by ``status``, a :class:`~engine.core.messages.DeliveryStatus`):

=====================================  =========  ==================================================
``pigeon_bind_in_flight_requests``     gauge      requests awaiting their answer (window occupancy)
``pigeon_bind_window_size``            gauge      the bind's window
``pigeon_bind_response_seconds``       histogram  submit (and keepalive) round trips
``pigeon_bind_throttled_total``        counter    answers that said "too fast" (0x58, 0x14, result 8)
``pigeon_bind_response_timeouts_total`` counter   requests unanswered within the response timeout
``pigeon_bind_reconnects_total``       counter    binds after the first one
``pigeon_bind_receipts_total``         counter    delivery receipts read on the bind, by status
=====================================  =========  ==================================================

They live here rather than in ``engine/observability/metrics.py`` because they need the ``bind`` label,
which the engine's label set lacks; a host registers :class:`BindCollector` in its registry (the
service does, for every gateway that offers ``metrics_collector()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from plugins.session_core.stats import LATENCY_BUCKETS, LinkStats

__all__ = ["FAMILIES", "BindCollector"]

FAMILIES = (
    "pigeon_bind_in_flight_requests",
    "pigeon_bind_window_size",
    "pigeon_bind_response_seconds",
    "pigeon_bind_throttled_total",
    "pigeon_bind_response_timeouts_total",
    "pigeon_bind_reconnects_total",
    "pigeon_bind_receipts_total",
)
"""Every family's exposed name."""

_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]


class BindCollector(Collector):
    """Reads a gateway's binds when scraped: ``binds()`` → bind index → (stats, in flight, window)."""

    def __init__(self, gateway: str, binds: Callable[[], Mapping[str, tuple[LinkStats, int, int]]]) -> None:
        self.gateway = gateway
        self.binds = binds

    def describe(self) -> list[Metric]:
        """The families without samples."""
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        labels = ["gateway", "bind"]
        yield GaugeMetricFamily(FAMILIES[0], "Requests awaiting their answer on the bind.", labels=labels)
        yield GaugeMetricFamily(FAMILIES[1], "The bind's in-flight window.", labels=labels)
        yield HistogramMetricFamily(FAMILIES[2], "Request round trips on the bind.", labels=labels)
        yield CounterMetricFamily(FAMILIES[3], "Answers that said too fast.", labels=labels)
        yield CounterMetricFamily(FAMILIES[4], "Requests unanswered in time.", labels=labels)
        yield CounterMetricFamily(FAMILIES[5], "Binds after the first one.", labels=labels)
        yield CounterMetricFamily(
            FAMILIES[6], "Delivery receipts read, by status.", labels=[*labels, "status"]
        )

    def collect(self) -> list[Metric]:
        """The families with one series per bind."""
        fams = list(self._families())
        gauge_in, gauge_win, hist, throttled, timeouts, reconnects, receipts = fams
        for bind, (stats, in_flight, window) in sorted(self.binds().items()):
            lv = [self.gateway, bind]
            gauge_in.add_metric(lv, in_flight)  # type: ignore[attr-defined]
            gauge_win.add_metric(lv, window)  # type: ignore[attr-defined]
            cumulative, buckets = 0, []
            for le, n in zip(_LE, list(stats.buckets), strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            hist.add_metric(lv, buckets=buckets, sum_value=stats.latency_sum)  # type: ignore[attr-defined]
            throttled.add_metric(lv, stats.throttled)  # type: ignore[attr-defined]
            timeouts.add_metric(lv, stats.expired)  # type: ignore[attr-defined]
            reconnects.add_metric(lv, stats.reconnects)  # type: ignore[attr-defined]
            for status, n in sorted(stats.receipts.items()):
                receipts.add_metric([*lv, status], n)  # type: ignore[attr-defined]
        return fams
