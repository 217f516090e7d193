"""Order exports read as columns of numbers: each row's customer key, order time, amount and paid flag.

An order export is any table with one row per order: a CSV or JSON Lines file (read by the same
source plugins a campaign's segment is, so encodings, gzip, Excel's quirks and bad rows are handled
the same way) or a query on PostgreSQL or MariaDB (:mod:`engine.outcomes.sql`). :class:`OrderParser`
turns each batch of rows into numpy arrays in a handful of whole-batch calls:

* the phone through the engine's normalizer (:func:`engine.core.speedups.phone_keys`, then
  :func:`engine.core.phone.parse_phone` for the odd ones) into its number key
  (:func:`engine.core.messages.number_key`);
* the order time into wall-clock seconds in the shop's time zone (ISO dates and times, ``2025/11/11
  10:00``, ``2025年11月11日``, Unix seconds or milliseconds, database timestamps; a time with an
  offset is converted to the shop's zone);
* the amount into cents (``1,299.00``, ``¥88``, ``88元`` are read; negative amounts are not);
* the status, when a status column is named, into "paid" (one of the paid values) or not.

A row that cannot be read becomes a :class:`engine.core.messages.Reject` with its row number and
reason, and the reading goes on.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from engine.core import speedups
from engine.core.config import convert_section
from engine.core.errors import ConfigError, SourceError
from engine.core.messages import Reject, number_key
from engine.core.phone import parse_phone
from engine.core.plugin_host import PluginHost
from engine.pipeline.source import SegmentReader, SourceBatch, SourceContext

__all__ = [
    "DAY",
    "FILE_FORMATS",
    "OrderColumns",
    "OrderParser",
    "OrderRejectReason",
    "ParsedOrders",
    "file_format",
    "open_file_orders",
    "shop_zone",
]

DAY: Final = 86_400
"""Seconds in a day: order times are wall-clock seconds, so ``seconds // DAY`` is the shop's date."""
FILE_FORMATS: Final = ("csv", "jsonl")
"""Order export file formats (the built-in source plugins of the same names read them)."""
_EARLIEST: Final = np.datetime64("1990-01-01T00:00:00", "s")
_LATEST: Final = np.datetime64("2100-01-01T00:00:00", "s")
"""Order times outside these are typos or a number read as a year (``20251111``): read one by one."""
_EPOCH: Final = datetime(1970, 1, 1)

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class OrderRejectReason(StrEnum):
    """Why an order row was not counted, besides the phone reasons of
    :class:`engine.core.messages.RejectReason` (``missing_phone``, ``invalid_number``…) and the
    source's own (``malformed_row``, ``undecodable``)."""

    BAD_TIME = "bad_time"
    """The order time is empty or not a date and time."""
    BAD_AMOUNT = "bad_amount"
    """The amount is empty, not a number, or negative."""
    AFTER_AS_OF = "after_as_of"
    """The order is dated after the day the recency is measured from (``--as-of``)."""


@dataclass(frozen=True)
class OrderColumns:
    """Which columns of the export hold what."""

    phone: str = "phone"
    """The customer's phone number, as the shop wrote it."""
    time: str = "paid_at"
    """When the order was paid (or placed)."""
    amount: str = "amount"
    """What the customer paid for the order, in yuan (or the shop's currency)."""
    status: str | None = None
    """The order's status; when given, only rows whose status is one of :attr:`paid` count as orders
    (the others still make their customer known: a customer with no paid order is *potential*)."""
    paid: frozenset[str] = field(default_factory=frozenset)
    """The status values that mean paid (``交易成功``, ``paid``…)."""

    def __post_init__(self) -> None:
        names = self.names()
        if len(set(names)) != len(names):
            raise ConfigError("command line", "columns", f"a column is named twice: {', '.join(names)}")
        if self.status is not None and not self.paid:
            raise ConfigError(
                "command line",
                "--paid",
                f"a status column ({self.status}) needs the values that mean paid: --paid 交易成功 …",
            )

    def names(self) -> list[str]:
        """The columns to read, in the order the parser expects them."""
        return [self.phone, self.time, self.amount, *([self.status] if self.status else [])]


def shop_zone(name: str) -> ZoneInfo:
    """The shop's time zone by IANA name (``Asia/Shanghai``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("command line", "--timezone", f"unknown time zone {name!r}") from None


def file_format(path: Path, given: str | None) -> str:
    """``csv`` or ``jsonl``: ``given``, else from the file name (``.csv``, ``.tsv``, ``.jsonl``,
    ``.ndjson``, each optionally ``.gz``)."""
    if given:
        return given
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise ConfigError(
        "command line", "--format", f"cannot tell the format of {path.name}: pass --format csv or jsonl"
    )


def open_file_orders(
    path: Path,
    columns: OrderColumns,
    *,
    fmt: str,
    encoding: str = "utf-8",
    delimiter: str = ",",
    host: PluginHost | None = None,
) -> SegmentReader:
    """Open an order export file with the source plugin of its format (``csv``/``jsonl``), reading
    just the order columns; raises :class:`SourceError` naming a column the file does not have."""
    host = host or PluginHost()
    if fmt not in host.sources:
        raise ConfigError("command line", "--format", f"no {fmt!r} source plugin is loaded")
    reg = host.sources.get(fmt)
    options: dict[str, Any] = {"path": str(path.resolve())}
    if fmt == "csv":
        options |= {"encoding": encoding, "delimiter": delimiter}
    config = convert_section(options, reg.config_type, file="command line", path="")
    reader: SegmentReader = reg.factory(config, SourceContext(base_dir=Path.cwd())).open(columns.names())
    try:
        check_columns(reader.columns, columns, str(path))
    except BaseException:
        reader.close()
        raise
    return reader


def check_columns(have: Sequence[str], columns: OrderColumns, where: str) -> None:
    """Raise :class:`SourceError` for each order column ``have`` lacks, with the close matches."""
    missing = [c for c in columns.names() if c not in have]
    if not missing:
        return
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, list(have), n=1, cutoff=0.5)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise SourceError(
        f"{where} has no column {', '.join(hints)}; its columns: {', '.join(have)}. "
        "Name the columns with --phone-column, --time-column, --amount-column (and --status-column)"
    )


@dataclass
class ParsedOrders:
    """One batch of readable orders as arrays (aligned), and the rows that were not readable."""

    keys: Int64Array
    """Each order's customer: the number key of the normalized phone."""
    seconds: Int64Array
    """Order times as wall-clock seconds since 1970-01-01 in the shop's time zone."""
    cents: Int64Array
    """Amounts in cents (hundredths of the currency unit)."""
    paid: BoolArray
    """Whether the row is a paid order (always, without a status column)."""
    rejects: list[Reject]


_CURRENCY = re.compile(r"[¥￥,，元\s]|RMB|CNY", re.IGNORECASE)
_FULL_WIDTH = str.maketrans("０１２３４５６７８９．－", "0123456789.-")
_DATE_SEPARATORS = str.maketrans({"/": "-", "年": "-", "月": "-", "日": None, ".": "-"})
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S")


class OrderParser:
    """Turns batches of order rows (strings from files, typed values from databases) into arrays.

    ``positions``: where the phone, time, amount (and status) are in each row; ``zone``: the shop's
    time zone, for times with an offset and for Unix timestamps; ``as_of_day``: orders dated after
    this day (days since 1970-01-01) are rejected (``after_as_of``), None to keep every order.
    """

    def __init__(
        self,
        columns: OrderColumns,
        positions: Sequence[int],
        zone: ZoneInfo,
        as_of_day: int | None = None,
    ) -> None:
        self.columns = columns
        self.positions = tuple(positions)
        self.zone = zone
        self.as_of_day = as_of_day
        self.paid_values = frozenset(v.strip() for v in columns.paid)

    @classmethod
    def for_reader(
        cls, reader_columns: Sequence[str], columns: OrderColumns, zone: ZoneInfo, as_of_day: int | None
    ) -> OrderParser:
        """A parser for rows laid out as ``reader_columns``."""
        cols = list(reader_columns)
        return cls(columns, [cols.index(c) for c in columns.names()], zone, as_of_day)

    def parse(self, batch: SourceBatch) -> ParsedOrders:
        """The batch's orders as arrays; the unreadable rows (and the source's rejects) as rejects."""
        rows, nums = batch.rows, batch.nums
        n = len(rows)
        rejects = list(batch.rejects)
        if n == 0:
            empty = np.empty(0, dtype=np.int64)
            return ParsedOrders(empty, empty.copy(), empty.copy(), np.empty(0, dtype=np.bool_), rejects)
        take = self.positions
        phones = list(map(itemgetter(take[0]), rows))
        times = list(map(itemgetter(take[1]), rows))
        amounts = list(map(itemgetter(take[2]), rows))
        failed: dict[int, tuple[str, str]] = {}

        keys = self._keys(phones, failed)
        seconds = self._seconds(times, failed)
        cents = self._cents(amounts, failed)
        if self.columns.status is not None:
            paid_values = self.paid_values
            status = list(map(itemgetter(take[3]), rows))
            paid = np.fromiter(map(paid_values.__contains__, status), dtype=np.bool_, count=n)
            for i in np.flatnonzero(~paid).tolist():  # a few: closed orders, or a value with spaces
                s = status[i]
                paid[i] = (s.strip() if isinstance(s, str) else str(s)) in paid_values
        else:
            paid = np.ones(n, dtype=np.bool_)
        if self.as_of_day is not None:
            late = np.flatnonzero(seconds >= (self.as_of_day + 1) * DAY)
            for i in late.tolist():
                failed.setdefault(
                    i,
                    (OrderRejectReason.AFTER_AS_OF, f"ordered {_date_text(int(seconds[i]))}, after --as-of"),
                )
        if failed:
            for i in sorted(failed):
                reason, detail = failed[i]
                raw = phones[i]
                rejects.append(Reject(nums[i], reason, detail, raw if isinstance(raw, str) else str(raw)))
            rejects.sort(key=lambda r: r.row)
            keep = np.ones(n, dtype=np.bool_)
            keep[list(failed)] = False
            keys, seconds, cents, paid = keys[keep], seconds[keep], cents[keep], paid[keep]
        return ParsedOrders(keys, seconds, cents, paid, rejects)

    # ---- phones ----------------------------------------------------------------------------

    def _keys(self, phones: list[Any], failed: dict[int, tuple[str, str]]) -> Int64Array:
        if set(map(type, phones)) != {str}:
            phones = ["" if p is None else str(p) for p in phones]
        keys, odd = speedups.phone_keys(phones)
        for i in odd:
            parsed = parse_phone(phones[i])
            if parsed.reason is None:
                keys[i] = number_key(parsed.national or parsed.e164)
            else:
                keys[i] = 0
                failed[i] = (parsed.reason, parsed.detail)
        return np.array(keys, dtype=np.int64)

    # ---- times -----------------------------------------------------------------------------

    def _seconds(self, values: list[Any], failed: dict[int, tuple[str, str]]) -> Int64Array:
        kinds = set(map(type, values))
        if kinds == {str}:
            arr = _all_or_none(values, _datetimes)
            if arr is None:
                # some value numpy cannot read: the plain forms (2025-11-11, 2025-11-11 10:23,
                # 2025-11-11 10:23:45) at once, the rest one by one below
                plain = _plain_times(values)
                arr = np.full(len(values), np.datetime64("NaT", "s"))
                if plain.any():
                    arr[plain] = _tolerant(list(compress(values, plain.tolist())), _datetimes, arr[0])
        elif kinds <= {datetime, date, type(None)} and not any(
            isinstance(v, datetime) and v.tzinfo for v in values
        ):  # a database's timestamps (NULL: NaT, rejected below)
            arr = _tolerant(values, _datetimes, np.datetime64("NaT", "s"))
        else:  # mixed types, numbers, or times with their zone: one by one
            return self._times_one_by_one(values, range(len(values)), failed)
        bad = np.isnat(arr) | (arr < _EARLIEST) | (arr >= _LATEST)
        out: Int64Array = arr.astype(np.int64)
        if bad.any():
            idx = np.flatnonzero(bad).tolist()
            out[idx] = self._times_one_by_one([values[i] for i in idx], idx, failed)
        return out

    def _times_one_by_one(
        self, values: Sequence[Any], positions: Sequence[int], failed: dict[int, tuple[str, str]]
    ) -> Int64Array:
        out = np.zeros(len(values), dtype=np.int64)
        for j, (i, v) in enumerate(zip(positions, values, strict=True)):
            s = _one_time(v, self.zone)
            if s is None:
                failed.setdefault(i, (OrderRejectReason.BAD_TIME, f"not a date and time: {_show(v)}"))
            else:
                out[j] = s
        return out

    # ---- amounts ---------------------------------------------------------------------------

    def _cents(self, values: list[Any], failed: dict[int, tuple[str, str]]) -> Int64Array:
        yuan = _all_or_none(values, _floats)
        if yuan is None and set(map(type, values)) == {str}:
            plain = _plain_amounts(values)  # 88, 88.5, 88.50: at once; the rest one by one below
            yuan = np.full(len(values), np.nan)
            if plain.any():
                yuan[plain] = _floats(list(compress(values, plain.tolist())))
        elif yuan is None:
            yuan = _tolerant(values, _floats, np.float64("nan"))
        bad = ~np.isfinite(yuan) | (yuan < 0) | (yuan > 1e12)
        if bad.any():
            for i in np.flatnonzero(bad).tolist():
                v = _one_amount(values[i])
                if np.isfinite(v) and 0 <= v <= 1e12:
                    yuan[i] = v
                    continue
                why = "negative" if v < 0 else "not an amount"
                failed.setdefault(i, (OrderRejectReason.BAD_AMOUNT, f"{why}: {_show(values[i])}"))
                yuan[i] = 0.0
        cents: Int64Array = np.rint(yuan * 100).astype(np.int64)
        return cents


_Arr = Any  # a numpy array of one dtype (datetime64 or float64)


def _datetimes(values: Sequence[Any]) -> _Arr:
    """All values at once as datetime64 seconds; raises when numpy cannot read one of them, or
    would convert a time zone on its own (a warning, made an error here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return np.array(values, dtype="datetime64[s]")


def _floats(values: Sequence[Any]) -> _Arr:
    """All values at once as float64 (NaN for None); raises when one is not a plain number."""
    return np.array(values, dtype=np.float64)


def _all_or_none(values: Sequence[Any], convert: Callable[[Sequence[Any]], _Arr]) -> _Arr | None:
    """``convert(values)``, or None when some value cannot be converted."""
    try:
        return convert(values)
    except _CONVERT_ERRORS:
        return None


def _codes(values: list[str]) -> npt.NDArray[np.uint32] | None:
    """The values as a 2-D array of code points (rows padded with 0), or None for an empty batch."""
    u = np.array(values)
    width = u.dtype.itemsize // 4
    if u.dtype.kind != "U" or width == 0:
        return None
    out: npt.NDArray[np.uint32] = u.view(np.uint32).reshape(len(values), width)
    return out


def _is(codes: npt.NDArray[np.uint32], col: int, chars: str) -> npt.NDArray[np.bool_]:
    """Whether column ``col`` of each row is one of ``chars``; ``""`` means the value has ended."""
    if col >= codes.shape[1]:  # past the longest value: every value has ended there
        return np.full(len(codes), chars == "", dtype=np.bool_)
    c = codes[:, col]
    if chars == "0-9":
        out: npt.NDArray[np.bool_] = (c >= 48) & (c <= 57)
        return out
    out = c == (ord(chars[0]) if chars else 0)
    for ch in chars[1:]:
        out |= c == ord(ch)
    return out


def _plain_times(values: list[str]) -> npt.NDArray[np.bool_]:
    """Which values are exactly ``YYYY-MM-DD``, optionally with `` HH:MM`` (or ``T``) and ``:SS``:
    forms numpy reads alike everywhere. Checked on all values at once, character by character."""
    codes = _codes(values)
    if codes is None or codes.shape[1] < 10:
        return np.zeros(len(values), dtype=np.bool_)
    d = "0-9"
    ok = _is(codes, 4, "-") & _is(codes, 7, "-")
    for col in (0, 1, 2, 3, 5, 6, 8, 9):
        ok &= _is(codes, col, d)
    minutes = _is(codes, 10, " T") & _is(codes, 13, ":")
    for col in (11, 12, 14, 15):
        minutes &= _is(codes, col, d)
    secs = minutes & _is(codes, 16, ":") & _is(codes, 17, d) & _is(codes, 18, d) & _is(codes, 19, "")
    ends = _is(codes, 10, "") | (minutes & _is(codes, 16, "")) | secs
    out: npt.NDArray[np.bool_] = ok & ends
    return out


def _plain_amounts(values: list[str]) -> npt.NDArray[np.bool_]:
    """Which values are digits with at most one dot, starting with a digit (``88``, ``88.50``)."""
    codes = _codes(values)
    if codes is None:
        return np.zeros(len(values), dtype=np.bool_)
    digit = (codes >= 48) & (codes <= 57)
    dot = codes == 46
    out: npt.NDArray[np.bool_] = (
        digit[:, 0] & np.all(digit | dot | (codes == 0), axis=1) & (dot.sum(axis=1) <= 1)
    )
    # no character after the padding starts (a value is never "1\x002")
    pad = codes == 0
    out &= ~np.any(pad[:, :-1] & ~pad[:, 1:], axis=1) if codes.shape[1] > 1 else True
    return out


_CONVERT_ERRORS = (ValueError, TypeError, OverflowError, UserWarning, DeprecationWarning)


def _tolerant(values: Sequence[Any], convert: Callable[[Sequence[Any]], _Arr], missing: Any) -> _Arr:
    """``convert(values)``, with ``missing`` where a value cannot be converted: on a failure the
    values are halved until the failing ones are found, so a few bad rows in a batch cost a few
    dozen small calls instead of a pass over every row in Python."""
    try:
        return convert(values)
    except _CONVERT_ERRORS:
        pass
    if len(values) <= 8:
        out = []
        for v in values:
            try:
                out.append(convert([v])[0])
            except _CONVERT_ERRORS:
                out.append(missing)
        return np.array(out, dtype=np.asarray(missing).dtype)
    mid = len(values) // 2
    return np.concatenate(
        (_tolerant(values[:mid], convert, missing), _tolerant(values[mid:], convert, missing))
    )


def _one_time(v: Any, zone: ZoneInfo) -> int | None:
    """One order time as wall-clock seconds in ``zone``, or None if it is not one."""
    dt: datetime | None
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):
        dt = datetime(v.year, v.month, v.day)
    elif isinstance(v, int | float) and not isinstance(v, bool):
        dt = _from_epoch(float(v), zone)
    elif isinstance(v, str):
        dt = _parse_time_text(v.strip(), zone)
    else:
        dt = None
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(zone).replace(tzinfo=None)
    if not 1990 <= dt.year < 2100:
        return None
    return (dt - _EPOCH) // timedelta(seconds=1)


def _from_epoch(value: float, zone: ZoneInfo) -> datetime | None:
    if value > 1e11:  # milliseconds
        value /= 1000
    try:
        return datetime.fromtimestamp(value, UTC).astimezone(zone)
    except (OverflowError, OSError, ValueError):
        return None


def _parse_time_text(s: str, zone: ZoneInfo) -> datetime | None:
    if not s:
        return None
    s = s.translate(_FULL_WIDTH)
    if s.isdigit():
        if len(s) in (10, 13):
            return _from_epoch(float(s), zone)
        for fmt in ("%Y%m%d", "%Y%m%d%H%M%S"):
            try:
                return datetime.strptime(s, fmt)
            except ValueError:
                continue
        return None
    head, sep, tail = s.partition(" ") if "T" not in s else s.partition("T")
    text = head.translate(_DATE_SEPARATORS).strip("-") + (sep + tail.strip() if sep else "")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    text = text.replace("T", " ")
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _one_amount(v: Any) -> float:
    """One amount in yuan (NaN when it is not one)."""
    if v is None or isinstance(v, bool):
        return float("nan")
    if not isinstance(v, str):
        try:
            return float(v)
        except (TypeError, ValueError):
            return float("nan")
    s = _CURRENCY.sub("", v.translate(_FULL_WIDTH))
    try:
        return float(s)
    except ValueError:
        return float("nan")


def _show(v: Any) -> str:
    text = v if isinstance(v, str) else repr(v)
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


def _date_text(seconds: int) -> str:
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%d")
