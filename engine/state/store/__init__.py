"""Durable state behind one interface: opt-outs now (caps, consent and the ledger later).

The embedded default is SQLite in WAL mode (:mod:`engine.state.store.sqlite`); a server-backed store
(Redis) implements the same :class:`Store` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import msgspec

from engine.state.optout import OptOutSet

__all__ = ["CONSENT_RETENTION_SECONDS", "ConsentRecord", "OptOutRecord", "Store"]

CONSENT_RETENTION_SECONDS = 150 * 86400
"""Consent proof is kept at least 5 months (the 2020 MIIT draft rule for commercial SMS)."""


class OptOutRecord(msgspec.Struct, frozen=True):
    """Someone who asked not to receive marketing messages, and how we know."""

    number: str
    """E.164 (``+8613800138000``)."""
    source: str
    """Where it came from: ``import``, ``manual``, ``mo`` (a reply), ``dlr`` (a carrier blacklist)…"""
    reason: str = ""
    created_at: float = 0.0
    """Unix time."""


class ConsentRecord(msgspec.Struct, frozen=True):
    """Someone who agreed to receive marketing messages, and the proof."""

    number: str
    """E.164."""
    source: str
    """Where consent was given: ``checkout``, ``member_signup``, ``import``…"""
    proof: str = ""
    """What shows it: an order id, a form submission id, a screenshot reference…"""
    created_at: float = 0.0


class Store(Protocol):
    """What the engine keeps between runs."""

    def add_optouts(self, records: Iterable[OptOutRecord]) -> int:
        """Record opt-outs (one transaction); returns how many were new."""

    def remove_optouts(self, numbers: Iterable[str]) -> int:
        """Forget opt-outs (E.164); returns how many there were."""

    def optout_records(self, numbers: Sequence[str]) -> dict[str, OptOutRecord]:
        """The records of those of ``numbers`` (E.164) that opted out."""

    def iter_optouts(self) -> Iterator[OptOutRecord]:
        """Every opt-out, in number order."""

    def count_optouts(self) -> int:
        """How many numbers opted out."""

    def load_optouts(self) -> OptOutSet:
        """Every opted-out number, as the in-memory set a blast checks."""

    def add_consents(self, records: Iterable[ConsentRecord]) -> int:
        """Record consents (one transaction); a number's latest consent replaces the earlier one."""

    def consent_records(self, numbers: Sequence[str]) -> dict[str, ConsentRecord]:
        """The consents of those of ``numbers`` (E.164) that gave one."""

    def prune_consents(self, before: float, now: float | None = None) -> int:
        """Forget consents older than ``before``; refuses to cut into the 5-month retention."""

    def close(self) -> None:
        """Release the database."""
