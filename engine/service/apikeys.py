"""API keys of the service: created once and shown once, kept at rest only as SHA-256 digests.

A key is 32 random bytes (``pgn_`` + URL-safe base64): with that much entropy a fast digest is
enough — slow password hashes (scrypt, argon2) protect guessable secrets, and would cost tens of
milliseconds on every request. The file holds names, digests, creation times, and optionally a
key's scopes and expiry — never a key.

A running service sees the file change (:meth:`KeyRing.refresh`: a ``stat`` every
:data:`WATCH_EVERY` seconds, at once on an unknown key, and on SIGHUP): a key revoked with
``pigeon keys revoke`` is refused, and one made with ``pigeon keys create`` accepted, within a
second, without a restart. The service never writes the file (the CLI does, atomically): when
each key was last used is kept in the store (:class:`KeyUsage`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import msgspec

from engine.core.errors import ConfigError

__all__ = [
    "IMPLIED",
    "SCOPES",
    "ApiKey",
    "KeyRing",
    "KeyUsage",
    "Scope",
    "check_callback_url",
    "digest",
    "url_under",
]

PREFIX = "pgn_"
WATCH_EVERY = 0.25
"""Seconds between two looks at the keys file by a running service."""

Scope = Literal["send", "campaigns", "read", "metrics", "events", "flows", "numbers", "approve"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
"""What a key may do: ``send`` (``POST /v1/messages``), ``campaigns`` (start, control and see
campaigns), ``read`` (look messages up), ``metrics`` (``/metrics``), ``events`` (``POST /v1/events``),
``flows`` (list, pause and resume flows, a customer's steps), ``numbers`` (see recipients' numbers
unmasked in look-ups, lists and status callbacks), ``approve`` (approve a campaign another key
submitted: ``review.require_approval``). A key without scopes may do all but ``numbers`` and
``approve``, which are never implied: they must be named."""
IMPLIED: tuple[Scope, ...] = ("send", "campaigns", "read", "metrics", "events", "flows")
"""What a key without scopes may do."""


class ApiKey(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One key on record (its digest, never the key)."""

    name: str
    sha256: str
    created_at: float
    scopes: list[Scope] | None = None
    """What it may do; None (unset): everything."""
    expires_at: float | None = None
    """Unix seconds after which it is refused; None: never."""
    callback_urls: list[str] | None = None
    """Where its messages' status callbacks may go: URL prefixes (scheme, host, port and the start
    of the path); None: no callback URL is allowed."""
    require_consent: bool = False
    """Its ``priority: marketing`` messages go only to numbers with a consent record (else
    ``suppressed: no_consent``)."""

    @property
    def id(self) -> str:
        """What logs name it by: its name (never the key, nor its digest)."""
        return self.name

    def allows(self, scope: Scope) -> bool:
        """Whether the key may do ``scope`` (``numbers`` and ``approve`` only when named)."""
        if self.scopes is None:
            return scope in IMPLIED
        return scope in self.scopes

    def callback_allowed(self, url: str) -> bool:
        """Whether ``url`` is under one of :attr:`callback_urls`."""
        return any(url_under(url, prefix) for prefix in self.callback_urls or ())

    def expired(self, now: float) -> bool:
        """Whether the key is past its expiry at ``now``."""
        return self.expires_at is not None and now >= self.expires_at


class _KeyFile(msgspec.Struct, kw_only=True):
    keys: list[ApiKey] = []


def url_under(url: str, prefix: str) -> bool:
    """Whether ``url`` has ``prefix``'s scheme, host and port, and a path that starts with its path
    (at a ``/`` boundary); no user info, no fragment."""
    try:
        u, p = urlsplit(url), urlsplit(prefix)
        if u.scheme not in ("http", "https") or u.username or u.password or u.fragment or not u.hostname:
            return False
        if (u.scheme, u.hostname, u.port) != (p.scheme, p.hostname, p.port):
            return False
    except ValueError:  # (a port out of range, a bad IPv6 literal)
        return False
    base = p.path or "/"
    path = u.path or "/"
    return bool(path == base or path.startswith(base if base.endswith("/") else base + "/"))


def check_callback_url(url: str) -> str | None:
    """What is wrong with ``url`` as an allow-list entry, or None."""
    try:
        u = urlsplit(url)
        u.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return "use an http:// or https:// URL with a host"
    if u.username or u.password or u.fragment or u.query:
        return "no user info, query or fragment"
    return None


def digest(key: str) -> str:
    """The hex SHA-256 of a key, as stored."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


class KeyRing:
    """The API keys in one JSON file (``service.keys_file``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: list[ApiKey] = []
        self._by_digest: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int, int, int] | None = None
        self.reload()

    def reload(self) -> None:
        """Read the file again (a missing file is an empty ring); :class:`ConfigError` if unreadable."""
        stamp = _stamp(self.path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise ConfigError(str(self.path), "service.keys_file", f"cannot read: {exc.strerror}") from None
        try:
            keys = msgspec.json.decode(data, type=_KeyFile).keys if data else []
        except msgspec.DecodeError as exc:
            raise ConfigError(str(self.path), "service.keys_file", f"not a key file: {exc}") from None
        self._keys = keys
        self._by_digest = {k.sha256: k for k in keys}
        self._stamp = stamp

    def refresh(self) -> bool:
        """Reload if the file changed since it was read (one ``stat``); whether it did. A file that
        cannot be read or parsed keeps the keys as they were and raises :class:`ConfigError`."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self.reload()
        return True

    def names(self) -> list[str]:
        """Names of the keys on record."""
        return [k.name for k in self._keys]

    def records(self) -> list[ApiKey]:
        """The keys on record."""
        return list(self._keys)

    def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] | None = None,
        expires_at: float | None = None,
        callback_urls: Iterable[str] | None = None,
        require_consent: bool = False,
    ) -> str:
        """Add a key named ``name`` and return it: the only time it is ever shown."""
        self.reload()  # (another process may have written it since)
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(str(self.path), "name", "use 1-64 letters, digits, '-' and '_'")
        if name in self.names():
            raise ConfigError(str(self.path), "name", f"a key named {name!r} exists; revoke it first")
        chosen: list[Scope] | None = None
        if scopes is not None:
            wanted = list(dict.fromkeys(scopes))
            bad = [s for s in wanted if s not in SCOPES]
            if bad or not wanted:
                what = f"unknown scope {bad[0]!r}" if bad else "no scope"
                raise ConfigError(str(self.path), "scope", f"{what}: use {', '.join(SCOPES)}")
            chosen = [s for s in SCOPES if s in wanted]
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise ConfigError(str(self.path), "expires", "the expiry is in the past")
        urls = list(dict.fromkeys(callback_urls)) if callback_urls else None
        for u in urls or ():
            why = check_callback_url(u)
            if why is not None:
                raise ConfigError(str(self.path), "callback-url", f"{u[:200]!r}: {why}")
        key = PREFIX + secrets.token_urlsafe(32)
        self._keys.append(
            ApiKey(
                name=name,
                sha256=digest(key),
                created_at=now,
                scopes=chosen,
                expires_at=expires_at,
                callback_urls=urls,
                require_consent=require_consent,
            )
        )
        self._save()
        return key

    def revoke(self, name: str) -> bool:
        """Remove the key named ``name``; whether there was one."""
        self.reload()
        before = len(self._keys)
        self._keys = [k for k in self._keys if k.name != name]
        if len(self._keys) == before:
            return False
        self._save()
        return True

    def find(self, key: str) -> ApiKey | None:
        """The key on record that ``key`` is, or None."""
        d = digest(key)
        found = self._by_digest.get(d)
        if found is None:
            return None
        return found if hmac.compare_digest(found.sha256, d) else None

    def check(self, key: str) -> str | None:
        """The name of the key ``key`` is, or None."""
        found = self.find(key)
        return found.name if found is not None else None

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.format(msgspec.json.encode(_KeyFile(keys=self._keys))))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)  # atomic: a service watching the file never reads half of it
        self._by_digest = {k.sha256: k for k in self._keys}
        self._stamp = _stamp(self.path)


USAGE_SCHEMA = """CREATE TABLE IF NOT EXISTS api_key_usage (
    name         TEXT PRIMARY KEY,   -- the API key's name
    last_used_at REAL NOT NULL
)"""


class KeyUsage:
    """When each key was last used, in the store (``api_key_usage``), written at most every few seconds."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}

    def used(self, name: str, now: float) -> None:
        """``name`` served a request at ``now`` (remembered until :meth:`flush`)."""
        self.pending[name] = now

    def flush(self, db: sqlite3.Connection) -> None:
        """Write what was used since the last flush (one short transaction on ``db``, a connection
        in autocommit mode)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        db.execute("BEGIN IMMEDIATE")  # (``db`` in autocommit mode: isolation_level=None)
        try:
            db.execute(USAGE_SCHEMA)
            db.executemany(
                "INSERT INTO api_key_usage VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                "last_used_at = max(last_used_at, excluded.last_used_at)",
                list(pending.items()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            for name, at in pending.items():  # tried again at the next flush
                self.pending[name] = max(at, self.pending.get(name, 0.0))
            raise

    @staticmethod
    def read(db: sqlite3.Connection) -> dict[str, float]:
        """Key name → when it was last used."""
        try:
            return dict(db.execute("SELECT name, last_used_at FROM api_key_usage").fetchall())
        except sqlite3.OperationalError:  # (no service has recorded a use yet)
            return {}
