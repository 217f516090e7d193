"""A campaign's gates in the store: test sends to its seed numbers and approvals, per content hash.

A campaign with ``[review]`` seeds (or ``require_test``) may start only after a test send of its
*current content* was accepted for every seed; one with ``require_approval`` only after someone
approved that content. The content is a hash of what a recipient would read and who they are —
the template and its variants, the segment's configuration and path, the tracked link and the
campaign's kind (:func:`content_hash`) — so changing the text after a test or an approval asks
for a new one, and changing the seeds, caps or the send window does not.

Both live in the engine's store file, beside the campaign ledger, in tables of their own: a test
send is never a message of the campaign (not in its ledger, counts, caps or dedupe). An approval is
used up by the run it lets start: it is bound to that run's ledger record (its ``created_at``),
so a resume of the run needs none, and a send ``--again`` of a finished campaign needs a new one.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec

from engine.core.config import CampaignConfig
from engine.core.errors import EngineError
from engine.state.ledger.tx import transaction

__all__ = ["Approval", "GateClosed", "Gates", "TestRecord", "content_hash"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign_tests (
    campaign TEXT NOT NULL,
    content  TEXT NOT NULL,     -- content_hash() of the campaign file when it was tested
    at       REAL NOT NULL,
    by       TEXT NOT NULL,     -- who asked: an API key's name, or the CLI's user
    sent     INTEGER NOT NULL,  -- test messages handed over
    accepted INTEGER NOT NULL,  -- of them, accepted by the gateway
    detail   TEXT NOT NULL      -- JSON: each message's variant, masked seed, outcome
);
CREATE INDEX IF NOT EXISTS campaign_tests_by_campaign ON campaign_tests (campaign, content);
CREATE TABLE IF NOT EXISTS campaign_approvals (
    campaign     TEXT NOT NULL,
    content      TEXT NOT NULL,
    at           REAL NOT NULL,
    by           TEXT NOT NULL,  -- the approving API key's name, or --approved-by NAME
    submitted_by TEXT NOT NULL,  -- the API key that submitted the campaign ('' from the CLI)
    via          TEXT NOT NULL,  -- 'api' or 'cli'
    generation   REAL            -- the ledger record (created_at) of the run it let start; NULL: unused
);
CREATE INDEX IF NOT EXISTS campaign_approvals_by_campaign ON campaign_approvals (campaign, content);
"""


class GateClosed(EngineError):
    """The campaign may not start yet: no accepted test send, or no approval, of its current content."""


def content_hash(config: CampaignConfig) -> str:
    """A short hash of what a test or an approval vouches for: template (text, variants, signature,
    opt-out text, filed template), segment (source, path and options), link and kind."""
    doc: dict[str, Any] = {
        "kind": config.kind,
        "template": msgspec.to_builtins(config.template),
        "segment": config.segment,
        "links": msgspec.to_builtins(config.links) if config.links is not None else None,
        "opt_out": config.opt_out_text,
    }
    return hashlib.sha256(msgspec.json.encode(doc, order="sorted")).hexdigest()[:16]


class TestRecord(msgspec.Struct, kw_only=True):
    """One test send of a campaign."""

    __test__ = False  # (not a pytest class)

    campaign: str
    content: str
    at: float
    by: str
    sent: int
    accepted: int
    messages: list[dict[str, str]] = []
    """Per message: ``variant``, ``to`` (masked), ``gateway``, ``outcome``, ``code``, ``id``."""

    @property
    def passed(self) -> bool:
        """Every test message was accepted by the gateway."""
        return self.sent > 0 and self.accepted == self.sent


class Approval(msgspec.Struct, kw_only=True):
    """One approval of a campaign's content."""

    campaign: str
    content: str
    at: float
    by: str
    submitted_by: str = ""
    via: str = "api"


class Gates:
    """The gate records of one store file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> Gates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- test sends ------------------------------------------------------------------------

    def record_test(self, record: TestRecord) -> None:
        """Keep a test send's outcome."""
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO campaign_tests VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.campaign,
                    record.content,
                    record.at,
                    record.by,
                    record.sent,
                    record.accepted,
                    msgspec.json.encode(record.messages).decode(),
                ),
            )

    def last_test(self, campaign: str, content: str | None = None) -> TestRecord | None:
        """The campaign's latest test send (of ``content`` when given)."""
        sql = (
            "SELECT campaign, content, at, by, sent, accepted, detail FROM campaign_tests WHERE campaign = ?"
        )
        args: tuple[str, ...] = (campaign,)
        if content is not None:
            sql += " AND content = ?"
            args += (content,)
        row = self.db.execute(sql + " ORDER BY at DESC, rowid DESC LIMIT 1", args).fetchone()
        if row is None:
            return None
        return TestRecord(
            campaign=row[0],
            content=row[1],
            at=row[2],
            by=row[3],
            sent=row[4],
            accepted=row[5],
            messages=msgspec.json.decode(row[6]),
        )

    def tested(self, campaign: str, content: str) -> bool:
        """Whether a test send of ``content`` was accepted for every seed."""
        found = self.db.execute(
            "SELECT 1 FROM campaign_tests WHERE campaign = ? AND content = ? AND sent > 0 "
            "AND accepted = sent LIMIT 1",
            (campaign, content),
        ).fetchone()
        return found is not None

    # -- approvals -------------------------------------------------------------------------

    def approve(self, approval: Approval) -> None:
        """Record an approval of a campaign's content (unused until a run starts with it)."""
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO campaign_approvals VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    approval.campaign,
                    approval.content,
                    approval.at,
                    approval.by,
                    approval.submitted_by,
                    approval.via,
                ),
            )

    def approval(self, campaign: str, content: str, running: float | None) -> Approval | None:
        """The approval that lets a run of ``content`` start: an unused one, or — ``running``, the
        ledger record of an unfinished run (its ``created_at``) — the one that run started with."""
        row = self.db.execute(
            "SELECT campaign, content, at, by, submitted_by, via FROM campaign_approvals "
            "WHERE campaign = ? AND content = ? AND (generation IS NULL OR generation = ?) "
            "ORDER BY at DESC LIMIT 1",
            (campaign, content, running if running is not None else -1.0),
        ).fetchone()
        if row is None:
            return None
        return Approval(
            campaign=row[0], content=row[1], at=row[2], by=row[3], submitted_by=row[4], via=row[5]
        )

    def bind(self, campaign: str, content: str, generation: float) -> None:
        """The run whose ledger record is ``generation`` started: its unused approvals are its own."""
        with transaction(self.db):
            self.db.execute(
                "UPDATE campaign_approvals SET generation = ? WHERE campaign = ? AND content = ? "
                "AND generation IS NULL",
                (generation, campaign, content),
            )

    def running(self, campaign: str) -> float | None:
        """The ``created_at`` of the campaign's unfinished run in the ledger (None: none)."""
        try:
            row = self.db.execute(
                "SELECT created_at FROM ledger_campaigns WHERE id = ? AND status = 'running'", (campaign,)
            ).fetchone()
        except sqlite3.OperationalError:  # no ledger in this store yet
            return None
        return float(row[0]) if row is not None else None

    # -- the check ---------------------------------------------------------------------------

    def check(
        self, campaign: str, config: CampaignConfig, *, approval: bool = True, approved_by: str = ""
    ) -> Approval | None:
        """Raise :class:`GateClosed` unless the campaign's gates are open for its current content;
        ``approval`` False checks the test only. ``approved_by`` (``pigeon send --approved-by``)
        records that person's approval first, once the test gate is open. Returns the approval
        the run starts with (None when none is required)."""
        review = config.review
        content = content_hash(config)
        if review.needs_test and not self.tested(campaign, content):
            last = self.last_test(campaign)
            if last is None:
                why = "no test send was made"
            elif last.content != content:
                why = (
                    "the campaign's content (template, variants, segment or link) changed since its "
                    f"last test send ({_when(last.at)})"
                )
            else:
                why = (
                    f"its last test send ({_when(last.at)}) was accepted for {last.accepted} of "
                    f"{last.sent} messages"
                )
            raise GateClosed(
                f"campaign {campaign!r} needs a test send to its {len(review.seeds)} seed number(s) "
                f"first: {why}. Nothing was sent. Run `pigeon send CAMPAIGN_FILE --test` (or post it "
                'with "test": true), check the phones, then send'
            )
        if not (approval and review.require_approval):
            return None
        if approved_by:
            self.approve(
                Approval(campaign=campaign, content=content, at=time.time(), by=approved_by, via="cli")
            )
        found = self.approval(campaign, content, self.running(campaign))
        if found is None:
            raise GateClosed(
                f"campaign {campaign!r} requires approval (review.require_approval) of its current "
                "content and has none. Nothing was sent. Through the service a second API key with the "
                "`approve` scope approves it (POST /v1/campaigns/{id}/approve); from the command line "
                "pass --approved-by NAME"
            )
        return found


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
