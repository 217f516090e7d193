"""API keys of the service: created once and shown once, kept at rest only as SHA-256 digests.

A key is 32 random bytes (``pgn_`` + URL-safe base64): with that much entropy a fast digest is
enough — slow password hashes (scrypt, argon2) protect guessable secrets, and would cost tens of
milliseconds on every request. The file holds names, digests and creation times, never a key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import msgspec

from engine.core.errors import ConfigError

__all__ = ["ApiKey", "KeyRing", "digest"]

PREFIX = "pgn_"


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """One key on record (its digest, never the key)."""

    name: str
    sha256: str
    created_at: float


class _KeyFile(msgspec.Struct, kw_only=True):
    keys: list[ApiKey] = []


def digest(key: str) -> str:
    """The hex SHA-256 of a key, as stored."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyRing:
    """The API keys in one JSON file (``service.keys_file``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: list[ApiKey] = []
        self._by_digest: dict[str, ApiKey] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file again (a missing file is an empty ring)."""
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

    def names(self) -> list[str]:
        """Names of the keys on record."""
        return [k.name for k in self._keys]

    def create(self, name: str) -> str:
        """Add a key named ``name`` and return it: the only time it is ever shown."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(str(self.path), "name", "use 1-64 letters, digits, '-' and '_'")
        if name in self.names():
            raise ConfigError(str(self.path), "name", f"a key named {name!r} exists; revoke it first")
        key = PREFIX + secrets.token_urlsafe(32)
        self._keys.append(ApiKey(name=name, sha256=digest(key), created_at=time.time()))
        self._save()
        return key

    def revoke(self, name: str) -> bool:
        """Remove the key named ``name``; whether there was one."""
        before = len(self._keys)
        self._keys = [k for k in self._keys if k.name != name]
        if len(self._keys) == before:
            return False
        self._save()
        return True

    def check(self, key: str) -> str | None:
        """The name of the key ``key`` is, or None."""
        found = self._by_digest.get(digest(key))
        if found is None:
            return None
        return found.name if hmac.compare_digest(found.sha256, digest(key)) else None

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.format(msgspec.json.encode(_KeyFile(keys=self._keys))))
        tmp.replace(self.path)
        self._by_digest = {k.sha256: k for k in self._keys}
