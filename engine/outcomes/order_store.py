"""Orders imported into the store for attribution: who (a salted hash of the phone), when paid, how much.

``pigeon orders import FILE`` reads an order export (CSV or JSON Lines, through the same source
plugins as segments) in batches and appends each batch in one transaction to the ``orders`` table
of the engine's store (the SQLite file the campaign ledger is in). The phone never enters the
table: each customer is ``who``, the first 8 bytes (as a signed 64-bit int) of

    SHA-256(salt + number)     number: the 11-digit national number for China, E.164 (+…) abroad

so an export that already carries that hash (``--hash-column``, 64 or 16 hex digits) imports the
same way as one with phones, and the report hashes the campaign's numbers with the same salt. The
salt is recorded in the store by the first import; an import with another salt is refused (its
orders could never match).

Re-importing is harmless: an order is keyed by its order id (``--id-column``), else by (who, paid
time, amount), and a key already there is skipped. Order times are the shop's wall-clock times
(``--timezone``), stored as epoch seconds.
"""

from __future__ import annotations

import csv
import hashlib
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from engine.core.config import convert_section
from engine.core.errors import ConfigError, EngineError, SourceError
from engine.core.messages import INTL_KEY_OFFSET, Reject
from engine.core.phone import mask
from engine.core.plugin_host import PluginHost
from engine.outcomes.orders import DAY, OrderColumns, OrderParser, file_format
from engine.pipeline.source import SourceContext

__all__ = [
    "ImportRequest",
    "ImportSummary",
    "OrderStore",
    "OrdersError",
    "import_orders",
    "number_text",
    "who_of_hex",
    "who_of_keys",
]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS orders (
    id      TEXT PRIMARY KEY,      -- the export's order id, else who:paid_at:cents
    who     INTEGER NOT NULL,      -- first 8 bytes of SHA-256(salt + number), signed
    paid_at REAL NOT NULL,         -- epoch seconds
    cents   INTEGER NOT NULL,
    code    TEXT NOT NULL DEFAULT ''  -- coupon or group code, as exported
);
CREATE INDEX IF NOT EXISTS orders_by_time ON orders (paid_at);
CREATE TABLE IF NOT EXISTS orders_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


class OrdersError(EngineError):
    """Orders cannot be imported or matched (another salt, an unusable hash column…)."""


def number_text(key: int) -> str:
    """The normalized number of a number key (:func:`engine.core.messages.number_key`)."""
    return str(key) if key < INTL_KEY_OFFSET else "+" + str(key - INTL_KEY_OFFSET)


def _who(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big", signed=True)


def who_of_keys(keys: Sequence[int] | Int64Array, salt: str) -> Int64Array:
    """``who`` of each number key (see the module's docstring)."""
    s = salt.encode()
    sha = hashlib.sha256
    return np.fromiter(
        (_who(sha(s + number_text(int(k)).encode()).digest()) for k in keys), dtype=np.int64, count=len(keys)
    )


def who_of_hex(values: Sequence[str]) -> tuple[Int64Array, list[int]]:
    """``who`` of each hex SHA-256 (64 digits, or its first 16); and the positions that are not one."""
    out = np.zeros(len(values), dtype=np.int64)
    bad: list[int] = []
    for i, v in enumerate(values):
        h = v.strip().lower() if isinstance(v, str) else ""
        if len(h) not in (16, 64):
            bad.append(i)
            continue
        try:
            out[i] = _who(bytes.fromhex(h[:16]))
        except ValueError:
            bad.append(i)
    return out, bad


class OrderStore:
    """The ``orders`` table of a store file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OrdersError(f"{self.path}: cannot open the store for orders: {exc}") from exc

    def salt(self) -> str | None:
        """The salt the store's orders were hashed with (None: no import yet)."""
        row = self.db.execute("SELECT value FROM orders_meta WHERE key = 'salt'").fetchone()
        return None if row is None else str(row[0])

    def use_salt(self, salt: str) -> None:
        """Record ``salt`` on the first import; refuse another one later."""
        have = self.salt()
        if have is None:
            self.db.execute("INSERT OR IGNORE INTO orders_meta VALUES ('salt', ?)", (salt,))
        elif have != salt:
            raise OrdersError(
                f"{self.path}: its orders were imported with another salt; orders hashed with a "
                "different salt can never match a campaign's numbers. Use the same --salt (or "
                "$PIGEON_ORDER_SALT) as before"
            )

    def add(
        self,
        ids: Sequence[str],
        who: Int64Array,
        paid_at: Float64Array,
        cents: Int64Array,
        codes: Sequence[str],
    ) -> int:
        """Append one batch in one transaction; returns how many were new (known ids are skipped)."""
        rows = list(zip(ids, who.tolist(), paid_at.tolist(), cents.tolist(), codes, strict=True))
        before = self.db.total_changes
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?)", rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return self.db.total_changes - before

    def count(self) -> int:
        """How many orders are stored."""
        return int(self.db.execute("SELECT count(*) FROM orders").fetchone()[0])

    def between(self, start: float, end: float) -> tuple[Int64Array, Float64Array, Int64Array]:
        """Orders paid in ``[start, end]`` (epoch seconds): who, paid_at, cents — read in chunks."""
        who: list[int] = []
        ts: list[float] = []
        cents: list[int] = []
        cur = self.db.execute(
            "SELECT who, paid_at, cents FROM orders WHERE paid_at BETWEEN ? AND ?", (start, end)
        )
        while chunk := cur.fetchmany(1 << 16):
            w, t, c = zip(*chunk, strict=True)
            who += w
            ts += t
            cents += c
        return np.array(who, dtype=np.int64), np.array(ts, dtype=np.float64), np.array(cents, dtype=np.int64)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


@dataclass
class ImportRequest:
    """What ``pigeon orders import`` was asked to read."""

    path: Path
    time_column: str = "paid_at"
    amount_column: str = "amount"
    phone_column: str | None = "phone"
    hash_column: str | None = None
    """A column holding SHA-256(salt + number) in hex, instead of the phone."""
    id_column: str | None = None
    code_column: str | None = None
    salt: str = ""
    timezone: str = "Asia/Shanghai"
    fmt: str | None = None
    encoding: str = "utf-8"
    delimiter: str = ","
    batch_size: int = 50_000
    rejects_path: Path | None = None
    """Where to write every unreadable row (``row,reason,detail,phone``, the number masked)."""


@dataclass
class ImportSummary:
    """What an import did."""

    rows: int = 0
    imported: int = 0
    already: int = 0
    """Orders already in the store (the same id): skipped."""
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    samples: list[Reject] = field(default_factory=list)
    stored: int = 0
    """Orders in the store after the import."""


def _epoch(seconds: Int64Array, zone: ZoneInfo) -> Float64Array:
    """Wall-clock seconds in ``zone`` → epoch seconds (the offset of each day at noon)."""
    if not seconds.size:
        return seconds.astype(np.float64)
    days, inverse = np.unique(seconds // DAY, return_inverse=True)
    epoch0 = datetime(1970, 1, 1)
    offsets = np.array(
        [
            (zone.utcoffset(epoch0 + timedelta(days=int(d), hours=12)) or timedelta()).total_seconds()
            for d in days.tolist()
        ],
        dtype=np.float64,
    )
    out: Float64Array = seconds.astype(np.float64) - offsets[inverse.reshape(-1)]
    return out


def import_orders(request: ImportRequest, store: OrderStore, host: PluginHost | None = None) -> ImportSummary:
    """Read the export in batches into ``store``; bad rows are counted with their reason."""
    from engine.outcomes.orders import shop_zone

    if (request.phone_column is None) == (request.hash_column is None):
        raise ConfigError("command line", "--phone-column", "give either a phone column or --hash-column")
    zone = shop_zone(request.timezone)
    path = request.path
    if not path.is_file():
        raise SourceError(f"order export not found: {path}")
    fmt = file_format(path, request.fmt)
    host = host or PluginHost()
    reg = host.sources.get(fmt)
    options: dict[str, Any] = {"path": str(path.resolve())}
    if fmt == "csv":
        delimiter = request.delimiter
        if delimiter == "," and path.name.lower().removesuffix(".gz").endswith(".tsv"):
            delimiter = "\t"
        options |= {"encoding": request.encoding, "delimiter": delimiter}
    config = convert_section(options, reg.config_type, file="command line", path="")
    who_col = request.phone_column or request.hash_column or ""
    wanted = [who_col, request.time_column, request.amount_column]
    extra = [c for c in (request.id_column, request.code_column) if c]
    reader = reg.factory(config, SourceContext(base_dir=Path.cwd())).open([*wanted, *extra])
    summary = ImportSummary()
    reasons: Counter[str] = Counter()
    rejects_out = None
    if request.rejects_path is not None:
        request.rejects_path.parent.mkdir(parents=True, exist_ok=True)
        rejects_out = request.rejects_path.open("w", newline="", encoding="utf-8")
        rejects_csv = csv.writer(rejects_out)
        rejects_csv.writerow(["row", "reason", "detail", "phone"])
    try:
        have = list(reader.columns)
        missing = [c for c in (*wanted, *extra) if c not in have]
        if missing:
            raise SourceError(
                f"{path} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(have)}. "
                "Name them with --phone-column/--hash-column, --time-column, --amount-column, "
                "--id-column, --code-column"
            )
        store.use_salt(request.salt)
        columns = OrderColumns(phone=who_col, time=request.time_column, amount=request.amount_column)
        parser = OrderParser.for_reader(have, columns, zone, None)
        pos_who, pos_time, pos_amount = (have.index(c) for c in wanted)
        pos_id = have.index(request.id_column) if request.id_column else -1
        pos_code = have.index(request.code_column) if request.code_column else -1
        for batch in reader.batches(request.batch_size):
            summary.rows += len(batch.rows) + len(batch.rejects)
            rejects = list(batch.rejects)
            if request.hash_column is None:
                parsed = parser.parse(batch)
                rejects = parsed.rejects
                # the parser drops the rows it rejects: keep the others' ids and codes aligned
                bad_rows = {r.row for r in parsed.rejects}
                keep = [i for i, n in enumerate(batch.nums) if n not in bad_rows]
                who = who_of_keys(parsed.keys, request.salt)
                seconds, cents = parsed.seconds, parsed.cents
            else:
                failed: dict[int, tuple[str, str]] = {}
                rows = batch.rows
                hashes = list(map(itemgetter(pos_who), rows))
                who_all, bad = who_of_hex(hashes)
                for i in bad:
                    failed[i] = ("bad_hash", "not a hex SHA-256 (64 or 16 hex digits)")
                secs_all = parser._seconds(list(map(itemgetter(pos_time), rows)), failed)
                cents_all = parser._cents(list(map(itemgetter(pos_amount), rows)), failed)
                keep = [i for i in range(len(rows)) if i not in failed]
                for i in sorted(failed):
                    reason, detail = failed[i]
                    rejects.append(Reject(batch.nums[i], reason, detail, ""))
                who, seconds, cents = who_all[keep], secs_all[keep], cents_all[keep]
            for r in rejects:
                reasons[r.reason] += 1
                if len(summary.samples) < 5:
                    summary.samples.append(r)
            if rejects_out is not None and rejects:
                rejects_csv.writerows((r.row, r.reason, r.detail, mask(r.phone)) for r in rejects)
            summary.rejected += len(rejects)
            if not keep:
                continue
            paid_at = _epoch(seconds, zone)
            if pos_id >= 0:
                ids = [str(batch.rows[i][pos_id]) for i in keep]
            else:
                ids = [
                    f"{w}:{t:.0f}:{c}"
                    for w, t, c in zip(who.tolist(), paid_at.tolist(), cents.tolist(), strict=True)
                ]
            codes = [str(batch.rows[i][pos_code] or "") for i in keep] if pos_code >= 0 else [""] * len(keep)
            new = store.add(ids, who, paid_at, cents, codes)
            summary.imported += new
            summary.already += len(keep) - new
    finally:
        reader.close()
        if rejects_out is not None:
            rejects_out.close()
    summary.reasons = dict(reasons.most_common())
    summary.stored = store.count()
    return summary
