"""The contract for settling ``unknown`` messages by a provider's query API, and its matching rule.

A message ends ``unknown`` when its request may have been taken but no answer came (a timeout, a
dropped connection, a crash while submitting). Providers with a query API (Aliyun
QuerySendDetails, Tencent PullSmsSendStatus) can say what became of it — but they know it by
*their* names: the number, and the key the request told them to echo (Aliyun ``OutId``, Tencent
``SessionContext``). So:

* a gateway that settles implements :class:`Settling`: given :class:`SettleQuery` items (Pigeon's
  message id, the number, when its request was handed over, and the keys that request may have
  carried) it asks its provider and answers :class:`Settled` — the provider's
  :class:`ProviderStatus` records, in the provider's terms, and nothing matched yet;
* gateways that settle name each request by the message id of its first message
  (:func:`request_key`), so the keys a message may have gone with are the message ids of the
  request the ledger recorded it in — after a crash too, with nothing journalled;
* :func:`match` pairs statuses with queries (same number, a key of the query's request, not from
  before the request): a final status settles the message; a "waiting" one proves the provider
  took it; no status at all proves it was never taken only when the gateway says it listed every
  record of that number (:attr:`Settled.listed`).

:class:`Journal` is the file where a gateway notes the messages of a call that got no answer with
their numbers (``unsettled-<gateway>.jsonl`` in the run's directory): ``pigeon settle`` reads the
numbers there for messages that come from no segment (the service's API streams).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from engine.core.messages import DeliveryStatus

__all__ = [
    "FINAL",
    "SKEW",
    "Journal",
    "Match",
    "ProviderStatus",
    "SettleQuery",
    "Settled",
    "Settling",
    "match",
    "queries_of",
    "request_key",
]

SKEW: Final = 120.0
"""Seconds a provider's clock (or its record of a send) may run before the hand-over Pigeon
recorded: a status older than that belongs to an earlier send to the same number."""

FINAL: Final = frozenset(
    {DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.EXPIRED, DeliveryStatus.REJECTED}
)
"""Statuses that settle a message (``unknown`` is the provider's "taken, no receipt yet")."""


class SettleQuery(msgspec.Struct, frozen=True, kw_only=True):
    """One message to ask a provider about."""

    message_id: str
    """Pigeon's id (``<campaign>-<row>``)."""
    number: str
    """The recipient in E.164 (``+8613800138000``)."""
    sent_at: float
    """Epoch seconds its request was handed over (the last time, for a message sent more than once)."""
    keys: frozenset[str]
    """What its request may have told the provider to echo: the message ids of that request's
    messages (:func:`request_key` names a call by one of them)."""


class ProviderStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider says about one message it took, in its own terms."""

    number: str
    """E.164."""
    key: str
    """The request's echo (Aliyun ``OutId``, Tencent ``SessionContext``)."""
    status: DeliveryStatus
    """``delivered`` / ``failed`` …, or ``unknown``: taken, no receipt yet."""
    code: str = ""
    """The provider's code (``DELIVERED``, ``MK:0001``, ``DELIVRD`` …)."""
    provider_id: str = ""
    """The provider's id of the message when the record has one (Tencent ``SerialNo``)."""
    at: float = 0.0
    """Epoch seconds the provider sent it, or else its receipt time (0: not given): a status from
    before a query's request is another send's."""
    done_at: float = 0.0
    """Epoch seconds of the receipt (0: none yet, or not given)."""


class Settled(msgspec.Struct, kw_only=True):
    """A gateway's answer to :meth:`Settling.settle`."""

    statuses: list[ProviderStatus]
    """What the provider said (about the queries, and for a pull API everything it handed out)."""
    listed: frozenset[str] = frozenset()
    """Message ids of queries whose number the provider listed *every* record of, for long enough
    after the send that a record not listed was never made: no matching status means never taken."""
    consumed: bool = False
    """The provider hands each status out once (Tencent's pull): statuses that match no query now
    are kept by the caller for later ones (another campaign's, a later settle's)."""


@runtime_checkable
class Settling(Protocol):
    """A gateway that can ask its provider what became of messages (optional, besides ``Gateway``)."""

    async def settle(self, queries: Sequence[SettleQuery]) -> Settled:
        """Ask the provider about ``queries``. Raises a :class:`~engine.core.errors.GatewayError` when it
        cannot be asked (unreachable, refused credentials…)."""


def request_key(message_ids: Sequence[str], indices: Sequence[int]) -> str:
    """The key a settling gateway gives a call carrying ``message_ids[i] for i in indices``: the
    message id of its first message (unique among a campaign's requests, and derivable from the
    ledger after a crash)."""
    return message_ids[indices[0]]


class Match(msgspec.Struct, frozen=True):
    """What :func:`match` found for one query."""

    query: SettleQuery
    status: ProviderStatus | None
    """The status that settles or describes it (None: nothing found)."""
    absent: bool = False
    """No status, and the provider listed every record of the number: it never took the message."""

    @property
    def final(self) -> bool:
        """Whether the message is settled (delivered, failed … or never taken)."""
        return self.absent or (self.status is not None and self.status.status in FINAL)


def match(
    queries: Iterable[SettleQuery],
    statuses: Iterable[ProviderStatus],
    listed: frozenset[str] = frozenset(),
    *,
    skew: float = SKEW,
) -> tuple[list[Match], set[int]]:
    """Pair statuses with queries: same number, a key of the query's request, and not from before
    the request (``at`` later than ``sent_at - skew``, or not given). A final status wins over a
    "taken, waiting" one, a later over an earlier. Returns one :class:`Match` per query and the
    positions (in ``statuses``) of the statuses that matched some query."""
    by_number: dict[str, list[tuple[int, ProviderStatus]]] = {}
    for i, s in enumerate(statuses):
        by_number.setdefault(s.number, []).append((i, s))
    out: list[Match] = []
    used: set[int] = set()
    for q in queries:
        best: tuple[int, ProviderStatus] | None = None
        for i, s in by_number.get(q.number, ()):
            if s.key not in q.keys or (s.at and s.at < q.sent_at - skew):
                continue
            used.add(i)
            if best is None or _rank(s) >= _rank(best[1]):
                best = (i, s)
        if best is not None:
            out.append(Match(q, best[1]))
        else:
            out.append(Match(q, None, absent=q.message_id in listed))
    return out, used


def _rank(s: ProviderStatus) -> tuple[bool, float]:
    return (s.status in FINAL, s.at)


class Journal:
    """Messages of calls that got no clear answer, with their numbers, for ``pigeon settle``.

    Each call is appended to ``<run dir>/unsettled-<gateway>.jsonl`` as one JSON line
    ``{"key", "at", "messages": [[message id, E.164 number], …]}`` (the file outlives the process)
    and kept in memory (:meth:`entries`).
    """

    def __init__(self, run_dir: Path | None, gateway: str) -> None:
        self.path = run_dir / f"unsettled-{gateway}.jsonl" if run_dir is not None else None
        self._entries: list[dict[str, Any]] = []

    def add(self, key: str, ids: Sequence[str], numbers: Sequence[str]) -> None:
        """Record a call whose fate is unknown (``numbers`` in E.164)."""
        entry: dict[str, Any] = {
            "key": key,
            "at": time.time(),
            "messages": [[i, n] for i, n in zip(ids, numbers, strict=True)],
        }
        self._entries.append(entry)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        """The calls recorded by this process."""
        return list(self._entries)

    def queries(self) -> list[SettleQuery]:
        """This process's calls as queries (each message keyed by its call's key)."""
        return queries_of(self._entries)

    @staticmethod
    def load(path: Path) -> list[dict[str, Any]]:
        """The calls recorded in a journal file (by any process); unreadable lines are skipped."""
        if not path.exists():
            return []
        out: list[dict[str, Any]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a crash
                continue
            if isinstance(entry, dict) and isinstance(entry.get("messages"), list):
                out.append(entry)
        return out


def queries_of(entries: Iterable[dict[str, Any]]) -> list[SettleQuery]:
    """Journal entries as queries (each message keyed by its call's key)."""
    return [
        SettleQuery(
            message_id=str(mid),
            number=str(number),
            sent_at=float(e.get("at", 0.0)),
            keys=frozenset({str(e.get("key", ""))}),
        )
        for e in entries
        for mid, number in e["messages"]
    ]
