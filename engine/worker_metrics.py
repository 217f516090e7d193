"""One ``/metrics`` for the service and its blast workers: their series summed with the service's.

Each blast runs in a worker process (:mod:`engine.blast_worker`) with its own registry, served on a
loopback port. A scrape of the service fetches every running worker's exposition and adds it to
the service's own, series by series (same names, same labels — no label per process or campaign,
so the label sets stay bounded): counters and histograms add up, gauges (queue depth, in-flight
requests and limits) add up across the processes, ``pigeon_build_info`` is kept once. When a worker
ends, its last counters and histograms (written to its run directory) are kept and added to every
later scrape, so a counter never goes down because a blast finished.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import anyio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["FETCH_TIMEOUT", "MergedMetrics", "fetch"]

FETCH_TIMEOUT = 2.0
"""Seconds a scrape waits for one worker's exposition (a late worker is left out of that scrape)."""

_Key = tuple[str, tuple[tuple[str, str], ...]]


class _Family:
    __slots__ = ("doc", "kind", "name", "values")

    def __init__(self, name: str, doc: str, kind: str) -> None:
        self.name, self.doc, self.kind = name, doc, kind
        self.values: dict[_Key, float] = {}

    def add(self, metric: Metric) -> None:
        values = self.values
        keep_one = self.name.endswith("_info")
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue
            key = (s.name, tuple(sorted(s.labels.items())))
            if keep_one:
                values[key] = max(values.get(key, 0.0), s.value)
            else:
                values[key] = values.get(key, 0.0) + s.value


class _Merged(Collector):
    def __init__(self, families: Iterable[_Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for f in self.families:
            m = Metric(f.name, f.doc, f.kind)
            for (name, labels), value in f.values.items():
                m.add_sample(name, dict(labels), value)
            yield m


def _merge(into: dict[str, _Family], metrics: Iterable[Metric], *, counters_only: bool = False) -> None:
    for metric in metrics:
        if counters_only and metric.type not in ("counter", "histogram"):
            continue
        fam = into.get(metric.name)
        if fam is None:
            fam = into[metric.name] = _Family(metric.name, metric.documentation, metric.type)
        if fam.kind == metric.type:
            fam.add(metric)


class MergedMetrics:
    """The service's registry plus its workers' expositions (see the module's docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.retired: dict[str, _Family] = {}
        """Counters and histograms of the workers that ended."""

    def retire(self, text: str) -> None:
        """A worker ended: keep its last counters and histograms in every later exposition."""
        _merge(self.retired, text_string_to_metric_families(text), counters_only=True)

    def render(self, live: Sequence[str]) -> bytes:
        """The text exposition of the service's series, the retired workers' and ``live`` ones'."""
        merged: dict[str, _Family] = {}
        _merge(merged, self.registry.collect())
        for fam in self.retired.values():
            target = merged.setdefault(fam.name, _Family(fam.name, fam.doc, fam.kind))
            if target.kind == fam.kind:
                for k, v in fam.values.items():
                    target.values[k] = target.values.get(k, 0.0) + v
        for text in live:
            _merge(merged, text_string_to_metric_families(text))
        out = CollectorRegistry(auto_describe=False)
        out.register(_Merged(merged.values()))
        return generate_latest(out)


async def fetch(url: str) -> str | None:
    """``GET url`` (a worker's ``http://127.0.0.1:port/metrics``): the body, or None when it does
    not answer in time (the worker is ending)."""
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.rpartition(":")
    with anyio.move_on_after(FETCH_TIMEOUT):
        try:
            async with await anyio.connect_tcp(host.strip("[]"), int(port)) as s:
                await s.send(
                    f"GET /{path} HTTP/1.1\r\nhost: {hostport}\r\nconnection: close\r\n\r\n".encode()
                )
                chunks: list[bytes] = []
                while True:
                    try:
                        chunks.append(await s.receive())
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        except OSError:
            return None
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or head[9:12] != b"200":
            return None
        return body.decode("utf-8", "replace")
    return None
