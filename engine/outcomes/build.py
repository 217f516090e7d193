"""``pigeon segment rfm``'s work: read an order export, total it per customer, score, group, write the files.

The output directory gets one CSV per (sub-)group (:mod:`engine.outcomes.segments`), ``groups.csv``
(one line per file: the start of the merchant's tracking table), ``rejects.csv`` (every row not
counted, with its row number and reason, numbers masked) and ``rfm.json`` (what :class:`RfmSummary`
holds: the scoring's cut points and means, the counts, the groups and their files). A directory a
previous build wrote is rebuilt in place (its old files removed first); any other non-empty
directory is refused.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

import msgspec

from engine.core.errors import SourceError
from engine.core.phone import mask
from engine.core.plugin_host import PluginHost
from engine.observability.report import RejectsWriter
from engine.outcomes.orders import (
    OrderColumns,
    OrderParser,
    file_format,
    open_file_orders,
    shop_zone,
)
from engine.outcomes.rfm import CLASSES, Scoring, score_customers
from engine.outcomes.segments import GroupSummary, group_customers, write_segments
from engine.outcomes.sql import is_database, open_sql_orders
from engine.outcomes.totals import CustomerTotals
from engine.pipeline.source import SegmentReader

__all__ = [
    "SUMMARY_FILE",
    "DimensionSummary",
    "RejectSample",
    "RfmRequest",
    "RfmSummary",
    "build_rfm",
    "open_orders",
]

SUMMARY_FILE: Final = "rfm.json"
GROUPS_FILE: Final = "groups.csv"
REJECTS_FILE: Final = "rejects.csv"
_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()

Progress = Callable[[int, float | None, bool], None]
"""Called with the rows read so far, the fraction of the export read (None if unknown), and True
once at the end."""


@dataclass
class RfmRequest:
    """What to read, how to score and group, and where to write."""

    orders: str
    """An order export file, or a database address (``postgresql://…``, ``mysql://…``)."""
    out_dir: Path
    columns: OrderColumns = field(default_factory=OrderColumns)
    fmt: str | None = None
    """``csv`` or ``jsonl`` (default: from the file name)."""
    encoding: str = "utf-8"
    delimiter: str = ","
    table: str | None = None
    query: str | None = None
    scoring: Scoring = field(default_factory=Scoring)
    as_of: date | None = None
    """Recency is counted from this day (default: the day of the latest order)."""
    timezone: str = "Asia/Shanghai"
    group_by: str = "class"
    max_size: int = 30_000
    """Groups over this many customers are split (0: never)."""
    batch_size: int = 50_000


class RejectSample(msgspec.Struct, frozen=True):
    """One of the first rows not counted."""

    row: int
    reason: str
    detail: str
    phone: str
    """Masked."""


class DimensionSummary(msgspec.Struct, frozen=True):
    """How R, F or M was scored: see :class:`engine.outcomes.rfm.DimensionScore`."""

    mode: str
    cuts: list[int]
    scores: int
    mean: float
    rule: str


class RfmSummary(msgspec.Struct, kw_only=True):
    """What a build read, how it scored, and what it wrote (``rfm.json``, and ``--json``)."""

    source: str
    out_dir: str
    as_of: str
    timezone: str
    rows: int
    """Rows read (orders counted, unpaid ones, and rejected ones)."""
    orders: int
    """Paid orders counted."""
    unpaid: int
    """Rows counted as not paid (status not a paid value): their customers are known, not buyers."""
    rejected: int
    reasons: dict[str, int]
    reject_samples: list[RejectSample]
    customers: int
    buyers: int
    revenue: float
    scoring: dict[str, DimensionSummary]
    stages: dict[str, list[int]]
    classes: dict[str, int]
    """Customers per class (every class, zeros included), in the seed's order."""
    group_by: str
    max_size: int
    groups: list[GroupSummary]
    files: dict[str, str]
    elapsed_seconds: float
    read_seconds: float
    orders_per_second: float
    """Rows read per second of reading and totalling (the build's throughput)."""
    folds: int


def open_orders(request: RfmRequest, host: PluginHost | None = None) -> tuple[SegmentReader, str]:
    """Open the order export of ``request``; returns the reader and how to name it."""
    if is_database(request.orders):
        sql = open_sql_orders(request.orders, request.columns, table=request.table, query=request.query)
        return sql, sql.where
    path = Path(request.orders)
    if request.table or request.query:
        raise SourceError(f"--table and --query are for a database address, not a file ({path})")
    if not path.is_file():
        raise SourceError(f"order export not found: {path}")
    fmt = file_format(path, request.fmt)
    delimiter = request.delimiter
    if delimiter == "," and path.name.lower().removesuffix(".gz").endswith(".tsv"):
        delimiter = "\t"  # a .tsv file is tab-separated unless told otherwise
    reader = open_file_orders(
        path, request.columns, fmt=fmt, encoding=request.encoding, delimiter=delimiter, host=host
    )
    return reader, str(path)


def _prepare(out_dir: Path) -> None:
    """Make ``out_dir`` ready: created, or emptied of what a previous build wrote there."""
    summary = out_dir / SUMMARY_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise SourceError(f"--out {out_dir} is a file, not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not summary.is_file() and {p.name for p in out_dir.iterdir()} <= {REJECTS_FILE}:
            (out_dir / REJECTS_FILE).unlink()  # a build that found no readable order left only this
            return
        if not summary.is_file():
            raise SourceError(
                f"--out {out_dir} is not empty and was not written by `pigeon segment rfm`: "
                "choose a new directory"
            )
        try:
            old = msgspec.json.decode(summary.read_bytes(), type=RfmSummary)
        except (msgspec.DecodeError, msgspec.ValidationError, OSError) as exc:
            raise SourceError(f"{summary} is unreadable ({exc}): remove {out_dir} first") from None
        names = {f.file for g in old.groups for f in g.files} | set(old.files.values())
        for name in names:
            (out_dir / Path(name).name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _rule(dim: str, mode: str, cuts: tuple[int, ...]) -> str:
    n = len(cuts) + 1
    how = "quantiles" if mode == "quantile" else "thresholds"
    if dim == "R":
        parts = [f"{n - i} within {c} days" for i, c in enumerate(cuts)]
        return f"{how}: " + ", ".join(parts) + f", 1 beyond {cuts[-1]} days"

    def unit(c: int) -> str:
        return f"{c} orders" if dim == "F" else f"{c / 100:g} yuan"

    parts = [f"{i + 2} from {unit(c)}" for i, c in enumerate(cuts)]
    return f"{how}: 1 below {unit(cuts[0])}, " + ", ".join(parts)


def build_rfm(
    request: RfmRequest, *, host: PluginHost | None = None, progress: Progress | None = None
) -> RfmSummary:
    """Read, total, score, group and write (see the module's docstring); returns the summary also
    written to ``rfm.json``. Raises :class:`SourceError` when the export cannot be read or has no
    readable order."""
    started = time.perf_counter()
    zone = shop_zone(request.timezone)
    out_dir = request.out_dir
    as_of_day = request.as_of.toordinal() - _EPOCH_DAY if request.as_of else None
    reader, source = open_orders(request, host)  # a wrong export or column: nothing is touched
    try:
        _prepare(out_dir)
        rejects = RejectsWriter(out_dir / REJECTS_FILE)
    except BaseException:
        reader.close()
        raise
    reasons: Counter[str] = Counter()
    samples: list[RejectSample] = []
    totals = CustomerTotals()
    rows = orders = unpaid = 0
    try:
        parser = OrderParser.for_reader(reader.columns, request.columns, zone, as_of_day)
        for batch in reader.batches(request.batch_size):
            parsed = parser.parse(batch)
            totals.add(parsed.keys, parsed.seconds, parsed.cents, parsed.paid)
            rows += len(batch.nums) + len(batch.rejects)
            paid = int(parsed.paid.sum())
            orders += paid
            unpaid += len(parsed.paid) - paid
            if parsed.rejects:
                rejects.write(parsed.rejects)
                reasons.update(r.reason for r in parsed.rejects)
                samples.extend(
                    RejectSample(r.row, r.reason, r.detail, mask(r.phone))
                    for r in parsed.rejects[: max(0, 5 - len(samples))]
                )
            if progress is not None:
                progress(rows, reader.fraction_read(), False)
    finally:
        reader.close()
        rejects.close()
    read_seconds = time.perf_counter() - started
    if progress is not None:
        progress(rows, 1.0, True)
    result = totals.result()
    if len(result) == 0:
        why = ", ".join(f"{r} {n:,}" for r, n in reasons.most_common()) or "no rows"
        top = reasons.most_common(1)[0][0] if reasons else ""
        hint = "Is --as-of right?" if top == "after_as_of" else "Are the columns and the encoding right?"
        raise SourceError(
            f"{source}: no readable order in {rows:,} rows ({why}); see {out_dir / REJECTS_FILE}. {hint}"
        )
    table = score_customers(result, request.scoring, as_of_day)
    grouping = group_customers(table, request.group_by, request.max_size)
    groups = write_segments(table, grouping, out_dir)
    _write_groups_csv(out_dir / GROUPS_FILE, groups)
    counts = Counter(table.klass.tolist())
    buyers = int((result.orders > 0).sum())
    elapsed = time.perf_counter() - started
    summary = RfmSummary(
        source=source if is_database(request.orders) else str(Path(request.orders)),
        out_dir=str(out_dir),
        as_of=date.fromordinal(table.as_of_day + _EPOCH_DAY).isoformat(),
        timezone=request.timezone,
        rows=rows,
        orders=orders,
        unpaid=unpaid,
        rejected=sum(reasons.values()),
        reasons=dict(reasons.most_common()),
        reject_samples=samples,
        customers=len(result),
        buyers=buyers,
        revenue=int(result.cents.sum()) / 100,
        scoring={
            name: DimensionSummary(
                d.mode, list(d.cuts), d.scores, round(d.mean, 4), _rule(name, d.mode, d.cuts)
            )
            for name, d in table.dims.items()
        },
        stages={"r_days": list(request.scoring.stages_r), "f_orders": list(request.scoring.stages_f)},
        classes={c.slug: counts.get(i, 0) for i, c in enumerate(CLASSES)},
        group_by=request.group_by,
        max_size=request.max_size,
        groups=groups,
        files={"groups": GROUPS_FILE, "rejects": REJECTS_FILE, "summary": SUMMARY_FILE},
        elapsed_seconds=round(elapsed, 3),
        read_seconds=round(read_seconds, 3),
        orders_per_second=round(rows / read_seconds, 1) if read_seconds > 0 else 0.0,
        folds=totals.folds,
    )
    (out_dir / SUMMARY_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(summary)) + b"\n")
    return summary


def _write_groups_csv(path: Path, groups: list[GroupSummary]) -> None:
    """One line per segment file: the merchant's tracking table starts here (targets per group)."""
    with path.open("w", newline="", encoding="utf-8-sig") as fh:  # a BOM: Excel shows the Chinese right
        w = csv.writer(fh)
        w.writerow(
            ["group", "file", "customers", "orders", "revenue", "avg_order_value", "of_group", "group_zh"]
        )
        for g in groups:
            for f in g.files:
                aov = f.revenue / f.orders if f.orders else 0.0
                w.writerow(
                    [f.group, f.file, f.customers, f.orders, f"{f.revenue:.2f}", f"{aov:.2f}", g.name, g.zh]
                )
