"""Short link codes and their clicks, in a SQLite file beside the store (``<store>.links.db``).

``link_codes`` maps each code to its campaign, group, recipient row (0 for a group's link) and
target URL; the send path adds a batch's codes in one transaction (``INSERT OR IGNORE``: a resume
finds its codes already there). ``clicks`` holds one row per (code, visitor) — the visitor is empty
for a recipient's own code, so a recipient's clicks are one row however often they tap it; a group
link's visitors are told apart by a hash of address and user agent — with the first and last time
and the number of hits. The redirector of ``pigeon serve`` reads codes and writes clicks.

``provider_links`` holds the per-phone links a gateway's provider made (``[links] mode =
"provider"``): one per (campaign, number), with the recipient row and group it was made for and
the gateway that made it, so a resume reuses them. Their clicks, pulled from the provider
(``pigeon links pull``), go into ``clicks`` under the link's URL as the code, once per link.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from engine.core.errors import EngineError
from engine.core.links import code as make_code

__all__ = ["LinkStore", "LinkTarget", "LinksError", "ProviderLink", "links_path"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS link_codes (
    code     TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    grp      TEXT NOT NULL,
    row      INTEGER NOT NULL,   -- 0: a group's link
    target   TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clicks (
    code     TEXT NOT NULL,
    visitor  TEXT NOT NULL,      -- '' for a recipient's own code
    campaign TEXT NOT NULL,
    grp      TEXT NOT NULL,
    row      INTEGER NOT NULL,
    first_at REAL NOT NULL,
    last_at  REAL NOT NULL,
    hits     INTEGER NOT NULL,
    PRIMARY KEY (code, visitor)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clicks_by_campaign ON clicks (campaign);
CREATE TABLE IF NOT EXISTS links_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS provider_links (
    campaign   TEXT NOT NULL,
    number     TEXT NOT NULL,    -- as the stages normalized it (national for China)
    url        TEXT NOT NULL,
    grp        TEXT NOT NULL,
    row        INTEGER NOT NULL, -- the recipient row it was made for
    gateway    TEXT NOT NULL,
    made_at    REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (campaign, number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS provider_links_by_url ON provider_links (url);
"""


class LinksError(EngineError):
    """The links file cannot be opened or written."""


def links_path(store_path: Path) -> Path:
    """The links file of a store file: ``pigeon.db`` → ``pigeon.links.db``."""
    return store_path.with_name(store_path.stem + ".links.db")


class LinkTarget(tuple[str, str, int, str]):
    """(campaign, group, row, target URL) of a code."""

    __slots__ = ()


class ProviderLink(tuple[str, str, str, int, str, float]):
    """(number, url, group, row, gateway, expires_at) of a provider-made link."""

    __slots__ = ()


class LinkStore:
    """Codes and clicks (see the module's docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO links_meta VALUES ('secret', ?)", (os.urandom(32),))
            self.secret: bytes = self.db.execute(
                "SELECT value FROM links_meta WHERE key = 'secret'"
            ).fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise LinksError(f"{self.path}: cannot open the links file: {exc}") from exc

    def assign(
        self,
        campaign: str,
        keys: Sequence[str],
        groups: Sequence[str],
        rows: Sequence[int],
        target: str,
        length: int,
        *,
        write: bool = True,
    ) -> list[str]:
        """The code of each key (a group name or a row number as text), added in one transaction
        when ``write``; a code another key holds is replaced by the key's next one."""
        attempt = [0] * len(keys)
        codes = [make_code(self.secret, campaign, k, length) for k in keys]
        if not write:
            return codes
        todo = list(range(len(keys)))
        while todo:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT OR IGNORE INTO link_codes VALUES (?, ?, ?, ?, ?)",
                    [(codes[i], campaign, groups[i], rows[i], target) for i in todo],
                )
                owner: dict[str, tuple[str, int, str]] = {}
                for k in range(0, len(todo), 900):
                    chunk = [codes[i] for i in todo[k : k + 900]]
                    marks = ",".join("?" * len(chunk))
                    for c, camp, row, grp in self.db.execute(
                        f"SELECT code, campaign, row, grp FROM link_codes WHERE code IN ({marks})", chunk
                    ):
                        owner[c] = (camp, row, grp)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            clash = [i for i in todo if owner.get(codes[i]) != (campaign, rows[i], groups[i])]
            for i in clash:
                attempt[i] += 1
                codes[i] = make_code(self.secret, campaign, keys[i], length, attempt[i])
            todo = clash
        return codes

    def resolve(self, short: str) -> LinkTarget | None:
        """The campaign, group, row and target of a code (None: unknown)."""
        row = self.db.execute(
            "SELECT campaign, grp, row, target FROM link_codes WHERE code = ?", (short,)
        ).fetchone()
        return None if row is None else LinkTarget(row)

    def click(self, short: str, visitor: str, found: LinkTarget, now: float | None = None) -> None:
        """Record a click, committed on return: a first (code, visitor) row, else one more hit."""
        ts = time.time() if now is None else now
        campaign, grp, row, _ = found
        self.db.execute(
            "INSERT INTO clicks VALUES (?, ?, ?, ?, ?, ?, ?, 1) "
            "ON CONFLICT (code, visitor) DO UPDATE SET hits = hits + 1, last_at = excluded.last_at",
            (short, visitor, campaign, grp, row, ts, ts),
        )

    def codes(self, campaign: str) -> dict[int, str]:
        """A campaign's recipient codes: row → code (group links have row 0: the last one wins)."""
        return dict(
            self.db.execute("SELECT row, code FROM link_codes WHERE campaign = ?", (campaign,)).fetchall()
        )

    def clicks(self, campaign: str) -> tuple[dict[int, int], dict[str, int]]:
        """A campaign's clicks: recipient row → hits (recipient codes), and group → visitors (group links)."""
        by_row: dict[int, int] = {}
        by_group: dict[str, int] = {}
        for row, grp, hits in self.db.execute(
            "SELECT row, grp, hits FROM clicks WHERE campaign = ?", (campaign,)
        ):
            if row:
                by_row[row] = by_row.get(row, 0) + hits
            else:
                by_group[grp] = by_group.get(grp, 0) + 1
        return by_row, by_group

    # -- provider-made links ---------------------------------------------------------------

    def provider_urls(self, campaign: str, numbers: Sequence[str]) -> dict[str, str]:
        """number → URL of the campaign's provider links among ``numbers`` (a few queries of 900)."""
        out: dict[str, str] = {}
        todo = list(dict.fromkeys(numbers))
        for k in range(0, len(todo), 900):
            chunk = todo[k : k + 900]
            marks = ",".join("?" * len(chunk))
            out.update(
                self.db.execute(
                    f"SELECT number, url FROM provider_links WHERE campaign = ? AND number IN ({marks})",
                    [campaign, *chunk],
                ).fetchall()
            )
        return out

    def add_provider_links(
        self, campaign: str, links: Sequence[ProviderLink], now: float | None = None
    ) -> None:
        """Store links a provider made, in one transaction (a number that has one keeps it)."""
        if not links:
            return
        ts = time.time() if now is None else now
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(
                    "INSERT OR IGNORE INTO provider_links VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(campaign, n, url, grp, row, gw, ts, exp) for n, url, grp, row, gw, exp in links],
                )
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LinksError(f"{self.path}: cannot store the provider's links: {exc}") from exc

    def provider_gateways(self, campaign: str) -> dict[str, float]:
        """Gateway → when it made its first link for ``campaign`` (empty: no provider links)."""
        return dict(
            self.db.execute(
                "SELECT gateway, MIN(made_at) FROM provider_links WHERE campaign = ? GROUP BY gateway",
                (campaign,),
            ).fetchall()
        )

    def provider_links(self, campaign: str) -> dict[str, ProviderLink]:
        """URL → the link, for every provider link of ``campaign``."""
        return {
            r[1]: ProviderLink(r)
            for r in self.db.execute(
                "SELECT number, url, grp, row, gateway, expires_at FROM provider_links WHERE campaign = ?",
                (campaign,),
            )
        }

    def record_provider_clicks(
        self, campaign: str, clicks: Sequence[tuple[str, float]], links: dict[str, ProviderLink]
    ) -> int:
        """Record (url, clicked_at) clicks on ``links`` (the campaign's, by URL) in one
        transaction, once per link however often a pull brings it; how many were new."""
        rows = [
            (url, "", campaign, link[2], link[3], at, at)
            for url, at in clicks
            if (link := links.get(url)) is not None
        ]
        if not rows:
            return 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO clicks VALUES (?, ?, ?, ?, ?, ?, ?, 1)", rows)
            added = self.db.total_changes - before
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return added

    def provider_clicked(self, campaign: str) -> int:
        """How many of ``campaign``'s provider links have a click recorded."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM clicks c JOIN provider_links p "
            "ON p.url = c.code AND p.campaign = c.campaign WHERE c.campaign = ?",
            (campaign,),
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection."""
        self.db.close()
