"""``pigeon settle``'s work: ask the providers' query APIs what became of a campaign's ``unknown`` messages.

For a campaign in the ledger:

1. its rows in state ``unknown`` (and, with ``submitted``, those accepted without a receipt yet),
   each with its last hand-over — when, to which gateway, and every row of that request (the
   keys the request may have carried: :func:`engine.sending.settling.request_key`);
2. their numbers: from the gateways' journals of calls without an answer
   (``<runs dir>/<campaign>/*/unsettled-*.jsonl``, ``<runs dir>/service/*/…`` for the API's
   streams), else from the campaign's segment read again (only while it is the file the campaign
   was sent from: its fingerprint must match the ledger's);
3. per gateway that implements :class:`~engine.sending.settling.Settling`, in batches: its answer matched
   with :func:`engine.sending.settling.match`; a final status is recorded as the message's delivery
   report (``delivered`` / ``failed``), a message the provider never took as ``failed``
   (``pigeon.NOT_SENT``); the rest stay as they are. Each batch is recorded before the next is
   asked, so an interrupted settle keeps what it learned; a second settle asks only about what is
   still unknown, so no message changes twice.

A pull API hands each status out once (Tencent): the statuses no message of this campaign matches
are receipts of other messages (applied by provider id) or kept in the store's
``settle_statuses`` table for the settle of the campaign they belong to.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import anyio
import msgspec
import numpy as np

from engine.core.config import LoadedEngine, convert_section, load_campaign
from engine.core.errors import GatewayError
from engine.core.messages import DeliveryReport, DeliveryStatus
from engine.core.plugin_host import PluginHost
from engine.pipeline.runner import Batch
from engine.pipeline.source import SourceContext
from engine.pipeline.stages.normalize import Normalize
from engine.sending.gateway import Gateway, GatewayContext
from engine.sending.settling import Journal, ProviderStatus, Settled, SettleQuery, Settling, match
from engine.state.ledger.records import LedgerError, LedgerState, file_fingerprint
from engine.state.ledger.store import Ledger
from engine.state.ledger.tx import transaction

__all__ = ["BATCH", "NOT_SENT", "SettleCounts", "asettle_campaign", "describe", "settle_campaign"]

BATCH: Final = 200
"""Messages asked about per call of a gateway's ``settle`` (each batch is recorded before the next)."""
NOT_SENT: Final = "pigeon.NOT_SENT"
"""The delivery code of a message the provider says it never took."""

_SCHEMA: Final = """CREATE TABLE IF NOT EXISTS settle_statuses (
    gateway     TEXT NOT NULL,
    number      TEXT NOT NULL,       -- E.164
    key         TEXT NOT NULL,       -- the request's echo (OutId / SessionContext)
    status      TEXT NOT NULL,
    code        TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    at          REAL NOT NULL,
    done_at     REAL NOT NULL,
    pulled_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS settle_statuses_by_number ON settle_statuses (gateway, number);
"""


class SettleCounts(msgspec.Struct, kw_only=True):
    """What one ``pigeon settle`` found."""

    campaign: str
    asked: int = 0
    """Messages asked about."""
    delivered: int = 0
    """Settled ``delivered``."""
    failed: int = 0
    """Settled ``failed`` by the provider's record (with its code)."""
    not_sent: int = 0
    """Never taken by the provider: ``failed`` with code ``pigeon.NOT_SENT`` (nobody got them)."""
    waiting: int = 0
    """Taken by the provider, no receipt yet: unchanged, ask again later."""
    unknown: int = 0
    """Nothing found (yet): unchanged."""
    receipts: int = 0
    """Statuses of other messages a pull handed out, recorded as their receipts."""
    kept: int = 0
    """Statuses a pull handed out that match no message yet, kept for a later settle."""
    not_asked: int = 0
    """Messages left unasked because their gateway could not be asked (see :attr:`errors`)."""
    no_number: int = 0
    """Messages whose number was in no journal and no readable segment: not asked about."""
    no_query_api: dict[str, int] = {}
    """Gateway → its messages not asked about: the gateway has no query API."""
    errors: list[str] = []
    """Why some batches could not be asked (their messages are unchanged)."""

    @property
    def settled(self) -> int:
        """Messages now in a final state."""
        return self.delivered + self.failed + self.not_sent


class _Statuses:
    """Statuses a pull handed out that no message matched yet (the ``settle_statuses`` table)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(_SCHEMA)  # (executescript commits by itself: no transaction around it)

    def add(self, gateway: str, statuses: Sequence[ProviderStatus], now: float) -> None:
        if statuses:
            with transaction(self.db):
                self.db.executemany(
                    "INSERT INTO settle_statuses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            gateway,
                            s.number,
                            s.key,
                            s.status.value,
                            s.code,
                            s.provider_id,
                            s.at,
                            s.done_at,
                            now,
                        )
                        for s in statuses
                    ],
                )

    def of(self, gateway: str, numbers: Sequence[str]) -> list[tuple[int, ProviderStatus]]:
        out: list[tuple[int, ProviderStatus]] = []
        wanted = list(dict.fromkeys(numbers))
        for k in range(0, len(wanted), 500):
            chunk = wanted[k : k + 500]
            marks = ",".join("?" * len(chunk))
            out += [
                (row[0], _status(row[1:]))
                for row in self.db.execute(
                    "SELECT rowid, number, key, status, code, provider_id, at, done_at FROM settle_statuses "
                    f"WHERE gateway = ? AND number IN ({marks})",
                    (gateway, *chunk),
                )
            ]
        return out

    def with_provider_ids(self, gateway: str) -> list[tuple[int, ProviderStatus]]:
        return [
            (row[0], _status(row[1:]))
            for row in self.db.execute(
                "SELECT rowid, number, key, status, code, provider_id, at, done_at FROM settle_statuses "
                "WHERE gateway = ? AND provider_id != ''",
                (gateway,),
            )
        ]

    def count(self, gateway: str) -> int:
        return int(
            self.db.execute("SELECT count(*) FROM settle_statuses WHERE gateway = ?", (gateway,)).fetchone()[
                0
            ]
        )

    def drop(self, rowids: Sequence[int]) -> None:
        if rowids:
            with transaction(self.db):
                self.db.executemany("DELETE FROM settle_statuses WHERE rowid = ?", [(r,) for r in rowids])


def _status(row: Sequence[Any]) -> ProviderStatus:
    number, key, status, code, pid, at, done_at = row
    return ProviderStatus(
        number=number,
        key=key,
        status=DeliveryStatus(status),
        code=code,
        provider_id=pid,
        at=float(at),
        done_at=float(done_at),
    )


def _journal_numbers(campaign_id: str, runs_dirs: Sequence[Path]) -> dict[str, str]:
    """Message id → E.164 number, from the journals of every run directory of the campaign (and of
    the service's, whose streams are campaigns ``api-…``)."""
    out: dict[str, str] = {}
    seen: set[Path] = set()
    for base in runs_dirs:
        for sub in (campaign_id, "service"):
            for path in sorted(base.glob(f"{sub}/*/unsettled-*.jsonl")):
                real = path.resolve()
                if real in seen:
                    continue
                seen.add(real)
                for entry in Journal.load(path):
                    for mid, number in entry["messages"]:
                        if str(mid).startswith(f"{campaign_id}-"):
                            n = str(number)
                            out[str(mid)] = n if n.startswith("+") else "+86" + n
    return out


def _segment_numbers(
    campaign_file: str, host: PluginHost, rows: set[int], recorded: Any, notify: Callable[[str], None]
) -> dict[int, str]:
    """Row → E.164 number for ``rows``, read from the campaign's segment — only while it is the
    segment the ledger recorded (same file, size and content)."""
    campaign = load_campaign(campaign_file)
    seg_path = campaign.source_options.get("path")
    path = None
    if isinstance(seg_path, str):
        p = Path(seg_path)
        path = p if p.is_absolute() else campaign.base_dir / p
    now = file_fingerprint(path, str(seg_path or campaign.segment.source), [])
    if (now.segment, now.size, now.sha256) != (
        recorded.segment,
        recorded.size,
        recorded.sha256,
    ) or now.size < 0:
        notify(
            f"the segment of {campaign_file} is not the file the campaign was sent from (or not a file): "
            "its numbers are not read from it"
        )
        return {}
    reg = host.sources.get(campaign.segment.source)
    options = convert_section(campaign.source_options, reg.config_type, file=campaign.file, path="segment")
    source = reg.factory(options, SourceContext(base_dir=campaign.base_dir))
    phone = campaign.segment.phone_field
    reader = source.open([phone])
    out: dict[int, str] = {}
    try:
        col = list(reader.columns).index(phone)
        normalize = Normalize()
        for sb in reader.batches(4096):
            if not any(r in rows for r in sb.nums):
                continue
            b = Batch(sb.nums, sb.rows, col, sb.rejects)
            normalize.process(b)
            for r, n in zip(b.nums, b.numbers, strict=True):
                if r in rows:
                    out[r] = n if n.startswith("+") else "+86" + n
            if len(out) == len(rows):
                break
    finally:
        reader.close()
    return out


def _open_gateway(engine: LoadedEngine, host: PluginHost, name: str, run_dir: Path) -> Gateway:
    gcfg = engine.config.gateways[name]
    reg = host.gateways.get(gcfg.plugin)
    opts = convert_section(gcfg.options, reg.config_type, file=engine.file, path=f"gateways.{name}.options")
    gateway: Gateway = reg.factory(opts, GatewayContext(name=name, base_dir=engine.base_dir, run_dir=run_dir))
    return gateway


def _runs_dirs(engine: LoadedEngine, extra: Sequence[Path]) -> list[Path]:
    """Where run directories may be: as given, the engine's ``runs_dir`` from here (``pigeon send``)
    and from the engine file's directory (``pigeon serve``)."""
    out: list[Path] = []
    for p in (*extra, Path(engine.config.runs_dir), engine.base_dir / engine.config.runs_dir):
        p = p.expanduser()
        if p.is_dir() and all(p.resolve() != q.resolve() for q in out):
            out.append(p)
    return out


def settle_campaign(
    engine: LoadedEngine,
    campaign_id: str,
    *,
    host: PluginHost | None = None,
    backend: str = "asyncio",
    submitted: bool = False,
    runs_dirs: Sequence[Path] = (),
    batch: int = BATCH,
    notify: Callable[[str], None] | None = None,
) -> SettleCounts:
    """:func:`asettle_campaign` on its own event loop (``backend``)."""
    return anyio.run(
        partial(
            asettle_campaign,
            engine,
            campaign_id,
            host=host,
            submitted=submitted,
            runs_dirs=runs_dirs,
            batch=batch,
            notify=notify,
        ),
        backend=backend,
    )


async def asettle_campaign(
    engine: LoadedEngine,
    campaign_id: str,
    *,
    host: PluginHost | None = None,
    submitted: bool = False,
    runs_dirs: Sequence[Path] = (),
    batch: int = BATCH,
    notify: Callable[[str], None] | None = None,
) -> SettleCounts:
    """Ask the gateways' query APIs about ``campaign_id``'s ``unknown`` messages (with
    ``submitted``, also those accepted without a receipt yet) and record what they say.

    Raises :class:`~engine.state.ledger.LedgerError` for a campaign the ledger does not know. A gateway
    that cannot be asked (unreachable, credentials refused) is noted in
    :attr:`SettleCounts.errors`; its messages not asked yet stay as they are (``not_asked``).
    """
    say = notify or (lambda _text: None)
    host = host or PluginHost(disabled=engine.config.plugins.disabled)
    ledger = Ledger(engine.store_path)
    try:
        counts = SettleCounts(campaign=campaign_id)
        by_gateway = await anyio.to_thread.run_sync(
            partial(_queries, engine, ledger, campaign_id, host, counts, submitted, runs_dirs, say)
        )
        if by_gateway:
            statuses = _Statuses(ledger.db)
            tmp = await anyio.to_thread.run_sync(partial(tempfile.mkdtemp, prefix="pigeon-settle-"))
            try:
                await _settle_all(engine, host, ledger, statuses, by_gateway, counts, batch, Path(tmp), say)
            finally:
                await anyio.to_thread.run_sync(partial(shutil.rmtree, tmp, ignore_errors=True))
        return counts
    finally:
        ledger.close()


def _queries(
    engine: LoadedEngine,
    ledger: Ledger,
    campaign_id: str,
    host: PluginHost,
    counts: SettleCounts,
    submitted: bool,
    runs_dirs: Sequence[Path],
    say: Callable[[str], None],
) -> dict[str, list[SettleQuery]]:
    """The campaign's messages to ask about, per gateway (those that cannot be asked are counted)."""
    rec = ledger.campaign(campaign_id)
    if rec is None:
        raise LedgerError(f"no campaign {campaign_id!r} in {ledger.path}")
    states = [LedgerState.UNKNOWN, *([LedgerState.SUBMITTED] if submitted else [])]
    rows = ledger.rows_in(campaign_id, *states).tolist()
    if not rows:
        return {}
    handovers = ledger.last_handovers(campaign_id, rows)
    numbers = _journal_numbers(campaign_id, _runs_dirs(engine, runs_dirs))
    missing = {r for r in rows if f"{campaign_id}-{r}" not in numbers}
    if missing and rec.campaign_file and Path(rec.campaign_file).is_file():
        for r, n in _segment_numbers(rec.campaign_file, host, missing, rec.fingerprint, say).items():
            numbers[f"{campaign_id}-{r}"] = n
    by_gateway: dict[str, list[SettleQuery]] = {}
    keys: dict[int, frozenset[str]] = {}
    for r in rows:
        mid = f"{campaign_id}-{r}"
        h = handovers.get(r)
        number = numbers.get(mid)
        if h is None or number is None:
            counts.no_number += 1
            continue
        ts, gateway, req = h
        ks = keys.get(id(req))
        if ks is None:
            ks = keys[id(req)] = frozenset(f"{campaign_id}-{x}" for x in np.asarray(req).tolist())
        by_gateway.setdefault(gateway, []).append(
            SettleQuery(message_id=mid, number=number, sent_at=ts, keys=ks)
        )
    for g in [g for g in by_gateway if g not in engine.config.gateways]:
        left = counts.no_query_api[g] = len(by_gateway.pop(g))
        say(f"gateway {g!r} is no longer in {engine.file}: its {left:,} messages are not asked about")
    return by_gateway


async def _settle_all(
    engine: LoadedEngine,
    host: PluginHost,
    ledger: Ledger,
    statuses: _Statuses,
    by_gateway: dict[str, list[SettleQuery]],
    counts: SettleCounts,
    batch: int,
    run_dir: Path,
    say: Callable[[str], None],
) -> None:
    for name, queries in by_gateway.items():
        gw = _open_gateway(engine, host, name, run_dir)
        try:
            if not isinstance(gw, Settling):
                counts.no_query_api[name] = len(queries)
                say(f"gateway {name!r} has no query API: its {len(queries):,} messages stay as they are")
                continue
            consumed = False
            for k in range(0, len(queries), batch):
                chunk = queries[k : k + batch]
                counts.asked += len(chunk)
                try:
                    answer = await gw.settle(chunk)
                except GatewayError as exc:  # this gateway's rest stays as it is; the next one is asked
                    counts.asked -= len(chunk)
                    counts.not_asked += len(queries) - k
                    counts.errors.append(str(exc))
                    say(f"{name}: cannot ask: {exc}")
                    break
                consumed = consumed or answer.consumed
                _record(name, chunk, answer, ledger, statuses, counts)
            if consumed:
                _receipts(name, ledger, statuses, counts)
        finally:
            await gw.aclose()


def _record(
    gateway: str,
    chunk: Sequence[SettleQuery],
    answer: Settled,
    ledger: Ledger,
    statuses: _Statuses,
    counts: SettleCounts,
) -> None:
    """Match one batch's answer and record its final statuses (one transaction)."""
    rowids: list[int] = []
    if answer.consumed:
        statuses.add(gateway, answer.statuses, time.time())
        stored = statuses.of(gateway, [q.number for q in chunk])
        rowids = [r for r, _ in stored]
        found, used = match(chunk, [s for _, s in stored], answer.listed)
    else:
        found, used = match(chunk, answer.statuses, answer.listed)
    reports: list[DeliveryReport] = []
    for m in found:
        q, s = m.query, m.status
        if m.absent:
            reports.append(
                DeliveryReport(
                    provider_id="",
                    status=DeliveryStatus.FAILED,
                    message_id=q.message_id,
                    code=NOT_SENT,
                    gateway=gateway,
                )
            )
            counts.not_sent += 1
        elif s is None:
            counts.unknown += 1
        elif not m.final:
            counts.waiting += 1
        else:
            reports.append(
                DeliveryReport(
                    provider_id="",
                    status=s.status,
                    message_id=q.message_id,
                    code=s.code,
                    done_at=s.done_at,
                    gateway=gateway,
                )
            )
            if s.status == DeliveryStatus.DELIVERED:
                counts.delivered += 1
            else:
                counts.failed += 1
    if reports:
        ledger.apply_reports(reports)
    if answer.consumed:
        statuses.drop([rowids[i] for i in sorted(used)])


def _receipts(gateway: str, ledger: Ledger, statuses: _Statuses, counts: SettleCounts) -> None:
    """The pulled statuses of messages accepted with a provider id: recorded as their receipts."""
    stored = statuses.with_provider_ids(gateway)
    if stored:
        known = ledger.known_providers([s.provider_id for _, s in stored])
        hits = [(r, s) for r, s in stored if s.provider_id in known]
        if hits:
            ledger.apply_reports(
                [
                    DeliveryReport(
                        provider_id=s.provider_id,
                        status=s.status,
                        code=s.code,
                        done_at=s.done_at,
                        gateway=gateway,
                    )
                    for _, s in hits
                    if s.status != DeliveryStatus.UNKNOWN
                ]
            )
            statuses.drop([r for r, _ in hits])
            counts.receipts += len(hits)
    counts.kept = statuses.count(gateway)


def describe(counts: SettleCounts) -> str:
    """The counts in one paragraph, for people."""
    if not counts.asked and not counts.no_number and not counts.no_query_api:
        return f"campaign {counts.campaign}: nothing to settle (no message is unknown)"
    parts = [
        f"campaign {counts.campaign}: asked about {counts.asked:,} message(s)",
        f"delivered {counts.delivered:,}",
        f"failed {counts.failed:,}",
        f"never taken by the provider {counts.not_sent:,} (failed, {NOT_SENT})",
        f"taken, no receipt yet {counts.waiting:,}",
        f"nothing found {counts.unknown:,}",
    ]
    text = ", ".join(parts)
    if counts.receipts:
        text += f"; {counts.receipts:,} receipt(s) of other messages recorded"
    if counts.kept:
        text += f"; {counts.kept:,} status(es) of other campaigns' messages kept for their settle"
    if counts.no_number:
        text += (
            f"; {counts.no_number:,} not asked about: their numbers are in no journal and the segment "
            "they were sent from is gone or changed"
        )
    for g, n in counts.no_query_api.items():
        text += f"; {n:,} sent through {g}, which has no query API"
    if counts.not_asked:
        text += f"; {counts.not_asked:,} not asked about: " + "; ".join(counts.errors)
    return text
