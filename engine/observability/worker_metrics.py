"""One ``/metrics`` for the service and its blast workers: their series summed with the service's.

Each blast runs in a worker process (:mod:`engine.run.blast_worker`) with its own registry (also served
on a loopback port of its own); the worker sends its exposition to the service once a second, and
a scrape of the service adds the last one of every running worker to the service's own, series by
series (same names, same labels — no label per process or campaign, so the label sets stay
bounded): counters and histograms add up, gauges (queue depth, in-flight requests and limits) add
up across the processes, ``pigeon_build_info`` and the configured carrier rates are kept once
(:data:`~engine.observability.metric_names.KEPT_ONCE`). When a worker ends, its last counters
and histograms (written to its run directory) are kept and added to every later scrape, so a
counter never goes down because a blast finished.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, generate_latest

from engine.observability.metric_names import KEPT_ONCE

__all__ = ["MergedMetrics"]


class _Family:
    __slots__ = ("help", "kind", "name", "values")

    def __init__(self, name: str, help_line: str, kind: str) -> None:
        self.name, self.help, self.kind = name, help_line, kind
        self.values: dict[str, float] = {}
        """``name{labels}`` → value."""


def _merge(into: dict[str, _Family], text: str, *, counters_only: bool = False) -> None:
    """Add the samples of the exposition ``text`` to ``into`` (a line scan: no full parse)."""
    helps: dict[str, str] = {}
    fam: _Family | None = None
    keep_one = False
    for line in text.splitlines():
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(" ", 3)
            if len(parts) < 4:
                continue
            if parts[1] == "HELP":
                helps[parts[2]] = line
            elif parts[1] == "TYPE":
                name, kind = parts[2], parts[3]
                fam = None
                if counters_only and kind not in ("counter", "histogram"):
                    continue
                fam = into.get(name)
                if fam is None:
                    fam = into[name] = _Family(name, helps.get(name, ""), kind)
                elif fam.kind != kind:
                    fam = None
                keep_one = name.endswith("_info") or name in KEPT_ONCE
            continue
        if fam is None:
            continue
        key, _, raw = line.rpartition(" ")
        if not key or key.split("{", 1)[0].endswith("_created"):
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        values = fam.values
        values[key] = max(values.get(key, value), value) if keep_one else values.get(key, 0.0) + value


def _number(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _render(families: dict[str, _Family]) -> bytes:
    out: list[str] = []
    for f in families.values():
        if f.help:
            out.append(f.help)
        out.append(f"# TYPE {f.name} {f.kind}")
        out.extend(f"{k} {_number(v)}" for k, v in f.values.items())
    out.append("")
    return "\n".join(out).encode()


class MergedMetrics:
    """The service's registry plus its workers' expositions (see the module's docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.retired: dict[str, _Family] = {}
        """Counters and histograms of the workers that ended."""

    def retire(self, text: str) -> None:
        """A worker ended: keep its last counters and histograms in every later exposition."""
        _merge(self.retired, text, counters_only=True)

    def render(self, live: Sequence[str]) -> bytes:
        """The text exposition of the service's series, the retired workers' and ``live`` ones'.

        Thread-safe with the event loop counting meanwhile (the service renders in a thread)."""
        own = generate_latest(self.registry).decode()
        if not live and not self.retired:
            return own.encode()
        merged: dict[str, _Family] = {}
        _merge(merged, own)
        for fam in list(self.retired.values()):
            target = merged.setdefault(fam.name, _Family(fam.name, fam.help, fam.kind))
            if target.kind == fam.kind:
                for k, v in fam.values.items():
                    target.values[k] = target.values.get(k, 0.0) + v
        for text in live:
            _merge(merged, text)
        return _render(merged)
