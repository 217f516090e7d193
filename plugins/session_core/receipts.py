"""Delivery receipts: provider ids in one canonical form, stat words → status, per-part folding.

Peers get message ids wrong in every way (``reference/providers-protocols-scaleout.md`` §6):
the submit answer says ``00B8BE19`` and the receipt ``b8be19`` or ``12107289`` (the same number
in decimal), with or without zero padding, in either letter case. :func:`canonical_id` folds case,
padding and NULs; :func:`id_forms` adds the hex↔decimal readings, tried in order until one
matches a tracked message. CMPP's 64-bit ``Msg_Id`` is canonical as its unsigned decimal.

The :class:`Correlator` remembers the part ids of each message submitted (bounded, oldest
forgotten first) and folds one receipt per part into one report per message:

* a part that failed (undeliverable, expired, rejected, unknown) settles the message with that
  status at once;
* the message is delivered when every part is;
* intermediate states (``ENROUTE``, ``ACCEPTD``) are ignored, and so is a second receipt for a
  part or one for a message already settled (duplicates);
* a receipt whose id is not (yet) known is parked for ``park`` seconds — an SMSC may send it
  before the submit answer is read — and then reported as it is, in the form learnt from the
  receipts that did match (the engine's ledger may still know the id: a restart forgets the
  table, not the ledger).
"""

from __future__ import annotations

import calendar
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import lru_cache
from typing import Final, NamedTuple

from pigeon import DeliveryReport, DeliveryStatus

__all__ = [
    "Correlator",
    "Receipt",
    "canonical_id",
    "id_forms",
    "parse_receipt_text",
    "status_of",
]

_FINAL: Final = {
    "DELIVRD": DeliveryStatus.DELIVERED,
    "DELIVERED": DeliveryStatus.DELIVERED,
    "EXPIRED": DeliveryStatus.EXPIRED,
    "UNDELIV": DeliveryStatus.FAILED,
    "UNDELIVERABLE": DeliveryStatus.FAILED,
    "DELETED": DeliveryStatus.FAILED,
    "REJECTD": DeliveryStatus.REJECTED,
    "REJECTED": DeliveryStatus.REJECTED,
    "UNKNOWN": DeliveryStatus.UNKNOWN,
}
_DELIVERED: Final = DeliveryStatus.DELIVERED
_INTERMEDIATE: Final = frozenset({"ENROUTE", "ACCEPTD", "ACCEPTED", "SCHEDULED", "BUFFRED", "BUFFERED"})

MESSAGE_STATES: Final = {
    1: None,  # ENROUTE
    2: DeliveryStatus.DELIVERED,
    3: DeliveryStatus.EXPIRED,
    4: DeliveryStatus.FAILED,  # DELETED
    5: DeliveryStatus.FAILED,  # UNDELIVERABLE
    6: None,  # ACCEPTED
    7: DeliveryStatus.UNKNOWN,
    8: DeliveryStatus.REJECTED,
}
"""SMPP ``message_state`` TLV values → status (None: not final)."""


def status_of(stat: str) -> DeliveryStatus | None:
    """The status of a receipt's ``stat`` word; None for an intermediate state.

    The standard words (``DELIVRD``, ``UNDELIV``, ``EXPIRED``…) map as their names say; a
    carrier's own code (``MK:0001``, ``DB:0144``, ``MBBLACK``…) is a failure, a blacklist one
    (``*BLACK*``) a rejection.
    """
    word = stat.strip().upper()
    hit = _FINAL.get(word)
    if hit is not None:
        return hit
    if word in _INTERMEDIATE:
        return None
    if "BLACK" in word:
        return DeliveryStatus.REJECTED
    return DeliveryStatus.FAILED


def canonical_id(raw: str) -> str:
    """A provider id with case, surrounding blanks/NULs and leading zeros folded away."""
    s = raw.strip().strip("\x00").strip().lower().lstrip("0")
    return s or "0"


_HEX_DIGITS: Final = frozenset("0123456789abcdef")


def id_forms(canon: str) -> list[str]:
    """The readings of a canonical id to look up: ``[as written, decimal→hex, hex→decimal]``
    (an entry is ``""`` where that reading does not apply)."""
    if not canon.isascii():  # (a latin-1 '³' is a digit to isdigit(), not to int())
        return [canon, "", ""]
    if canon.isdigit():
        n = len(canon)
        if n == 1:
            return [canon, "", ""]  # 0-9 read the same in both bases
        dec2hex = format(int(canon), "x") if n <= 20 else ""
        hex2dec = str(int(canon, 16)) if n <= 16 else ""
        return [canon, dec2hex, hex2dec]
    if len(canon) <= 16 and _HEX_DIGITS.issuperset(canon):
        return [canon, "", str(int(canon, 16))]
    return [canon, "", ""]


class Receipt(NamedTuple):
    """What a receipt says, in any protocol."""

    id: str
    """The provider id as the receipt wrote it."""
    stat: str
    """The stat word (``DELIVRD``) or the carrier's code."""
    err: str = ""
    done_at: float = 0.0
    addr: str = ""
    """The handset's number as the receipt gives it (settles an id that reads two ways)."""


_FIELD = re.compile(
    r"(id|sub|dlvrd|submit date|done date|stat|err|text)\s*:\s*",
    re.IGNORECASE,
)


_STANDARD = re.compile(
    r"id:(\S+) sub:\S* dlvrd:\S* submit date:\d* done date:(\d*) stat:(\S+) err:(\S*)", re.IGNORECASE
)
"""The usual layout, read in one match before the lenient reader."""


def parse_receipt_text(text: str, utc_offset_hours: float = 0.0) -> Receipt | None:
    """Read the de-facto receipt text ``id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…``.

    Lenient: keys in any case, fields in any order, dates with or without seconds, ``err`` not
    necessarily numeric. None when it has no ``id`` or no ``stat``.
    """
    m = _STANDARD.match(text)
    if m is not None:
        return Receipt(m.group(1), m.group(3), m.group(4), receipt_time(m.group(2), utc_offset_hours))
    fields: dict[str, str] = {}
    marks = list(_FIELD.finditer(text))
    for i, mark in enumerate(marks):
        key = mark.group(1).lower()
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        value = text[mark.end() : end]
        fields.setdefault(key, value if key == "text" else value.strip())
    rid, stat = fields.get("id", ""), fields.get("stat", "")
    if not rid or not stat:
        return None
    err = fields.get("err", "").split(" ")[0]
    return Receipt(
        rid.split()[0], stat.split()[0], err, receipt_time(fields.get("done date", ""), utc_offset_hours)
    )


@lru_cache(maxsize=4096)
def receipt_time(value: str, utc_offset_hours: float = 0.0) -> float:
    """Epoch seconds of a ``YYMMDDhhmm[ss]`` receipt date in the peer's zone (0 when unreadable).

    Remembered for the last few thousand dates (the receipts of one minute share theirs)."""
    if len(value) not in (10, 12) or not value.isdigit():
        return 0.0
    yy, mo, dd, hh, mi = int(value[0:2]), int(value[2:4]), int(value[4:6]), int(value[6:8]), int(value[8:10])
    ss = int(value[10:12]) if len(value) == 12 else 0
    if not (1 <= mo <= 12 and 1 <= dd <= 31 and hh < 24 and mi < 60 and ss < 61):
        return 0.0
    return calendar.timegm((2000 + yy, mo, dd, hh, mi, ss, 0, 0, 0)) - utc_offset_hours * 3600.0


class _Tracked:
    __slots__ = ("done", "key", "message_id", "part_ids", "provider_id", "states", "to")

    def __init__(self, key: int, message_id: str, part_ids: tuple[str, ...], to: str) -> None:
        self.key = key
        self.to = to
        self.message_id = message_id
        self.provider_id = part_ids[0]
        self.part_ids = part_ids
        self.states: list[DeliveryStatus | None] | None = None
        """Each part's final status, from a multipart message's first receipt on (a message of one
        part is settled by its first: no list for most messages)."""
        self.done = False

    def is_open(self, part: int) -> bool:
        """Whether ``part`` still waits for its receipt."""
        return not self.done and (self.states is None or self.states[part] is None)


class _Parked:
    __slots__ = ("done", "forms", "receipt", "status", "until")

    def __init__(self, until: float, receipt: Receipt, status: DeliveryStatus, forms: list[str]) -> None:
        self.until = until
        self.receipt = receipt
        self.status = status
        self.forms = forms
        self.done = False


class Correlator:
    """Matches receipts to submitted messages and folds their parts; see the module docstring.

    :param gateway: written into each report.
    :param max_tracked: messages remembered (the oldest are forgotten first).
    :param park: seconds an unknown receipt waits for its submit answer.
    """

    def __init__(
        self,
        gateway: str,
        *,
        max_tracked: int = 500_000,
        park: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.max_tracked = max_tracked
        self.park = park
        self.clock = clock
        self._messages: OrderedDict[int, _Tracked] = OrderedDict()
        self._parts: dict[str, tuple[int, int]] = {}
        """Canonical part id → (message key, part index)."""
        self._ids = 0
        self._parked: dict[str, list[_Parked]] = {}
        """Every reading of a parked receipt's id → the receipts parked under it."""
        self._parked_ids: dict[str, _Parked] = {}
        """A parked receipt's id as written (canonical) → it (a second one is a duplicate)."""
        self._parked_order: deque[_Parked] = deque()
        self._evidence = [0, 0, 0]
        """How often each reading of :func:`id_forms` was the only one that matched."""
        self.duplicates = 0
        self.unmatched = 0
        self.awaiting = 0
        """Messages tracked whose final receipt has not come (forgotten ones not counted)."""

    def __len__(self) -> int:
        return len(self._messages)

    def track(self, message_id: str, part_ids: list[str], to: str = "") -> list[DeliveryReport]:
        """Remember a message to ``to`` accepted as ``part_ids`` (canonical); reports for receipts
        parked for it."""
        self._ids = key = self._ids + 1
        self.awaiting += 1
        messages = self._messages
        messages[key] = _Tracked(key, message_id, tuple(part_ids), to)
        parts = self._parts
        if len(part_ids) == 1:
            parts[part_ids[0]] = (key, 0)
        else:
            for i, pid in enumerate(part_ids):
                parts[pid] = (key, i)
        if len(messages) > self.max_tracked:
            while len(messages) > self.max_tracked:
                _, old = messages.popitem(last=False)
                self._forget(old)
        if not self._parked:
            return []
        out: list[DeliveryReport] = []
        evidence = self._evidence
        for i, pid in enumerate(part_ids):
            waiting = self._parked.get(pid)
            if not waiting:
                continue
            fits = [p for p in waiting if not p.receipt.addr or not to or p.receipt.addr[-8:] == to[-8:]]
            if not fits:
                continue
            # several receipts read as this id: the one written as it, else the likeliest reading
            best = max(
                fits, key=lambda p: evidence[p.forms.index(pid)] + (1 << 30 if p.forms[0] == pid else 0)
            )
            self._unpark(best)
            out += self._fold((key, i), best.receipt, best.status)
        return out

    def _unpark(self, p: _Parked) -> None:
        p.done = True
        for form in p.forms:
            if not form:
                continue
            waiting = self._parked.get(form)
            if waiting is not None:
                if p in waiting:
                    waiting.remove(p)
                if not waiting:
                    del self._parked[form]
        if self._parked_ids.get(p.forms[0]) is p:
            del self._parked_ids[p.forms[0]]

    def _forget(self, t: _Tracked) -> None:
        if not t.done:
            self.awaiting -= 1
        parts = self._parts
        for pid in t.part_ids:
            hit = parts.get(pid)
            if hit is not None and hit[0] == t.key:  # (an id the peer reused later stays)
                del parts[pid]

    def _find(self, canon: str, addr: str = "", *, strict: bool = True) -> tuple[int, int] | None:
        """The (message, part) a receipt id names. An id that reads as two tracked ids (``16``:
        decimal 16, or hex 0x16?) is settled by the handset's number, else by which reading
        alone matched before.

        A match by another reading than the id as written is a guess: with ``strict`` it must not
        contradict the handset's number (the receipt for hex ``14`` may come before that message
        is tracked, while the message tracked as ``e`` — decimal 14 — waits for its own), so such a
        receipt is parked until its own message is tracked; when its wait is over (``strict``
        off) the guess is taken, as for a peer whose receipts carry no usable number."""
        parts = self._parts
        forms = id_forms(canon)
        hits = [(n, hit) for n, form in enumerate(forms) if form and (hit := parts.get(form))]
        if strict and addr and hits:
            tail = addr[-8:]
            messages = self._messages
            hits = [
                h
                for h in hits
                if not h[0] or (t := messages.get(h[1][0])) is None or not t.to or t.to[-8:] == tail
            ]
        if not hits:
            return None
        if len(hits) == 1:
            if hits[0][0] or forms[1] or forms[2]:
                self._evidence[hits[0][0]] += 1
            return hits[0][1]
        if len(hits) > 1:  # a part that has its receipt already is not the one this is for
            open_ = [h for h in hits if (t := self._messages.get(h[1][0])) is not None and t.is_open(h[1][1])]
            if open_:
                hits = open_
        if len(hits) > 1 and addr:
            tail = addr[-8:]
            same = [h for h in hits if (t := self._messages.get(h[1][0])) is not None and t.to[-8:] == tail]
            if same:
                hits = same
        if len(hits) == 1:
            if hits[0][0] or forms[1] or forms[2]:
                self._evidence[hits[0][0]] += 1
            return hits[0][1]
        evidence = self._evidence
        return max(hits, key=lambda h: (evidence[h[0]], -h[0]))[1]

    def _learnt(self, canon: str) -> str:
        """The reading of an unmatched id that matched most often before (as written when none did)."""
        forms = id_forms(canon)
        evidence = self._evidence
        best = max((n for n in range(3) if forms[n]), key=lambda n: (evidence[n], -n))
        return forms[best]

    def receipt(self, receipt: Receipt, status: DeliveryStatus | None = None) -> list[DeliveryReport]:
        """Take one receipt; the reports it settles (none, or one for its message)."""
        if status is None:
            status = status_of(receipt.stat)
            if status is None:
                return []
        canon = canonical_id(receipt.id)
        hit = self._find(canon, receipt.addr)
        if hit is None:
            if canon in self._parked_ids:  # the same receipt again while the first one waits
                self.duplicates += 1
                return []
            p = _Parked(self.clock() + self.park, receipt, status, id_forms(canon))
            for form in p.forms:
                if form:
                    self._parked.setdefault(form, []).append(p)
            self._parked_ids[canon] = p
            self._parked_order.append(p)
            return []
        return self._fold(hit, receipt, status)

    def _fold(self, hit: tuple[int, int], receipt: Receipt, status: DeliveryStatus) -> list[DeliveryReport]:
        t = self._messages.get(hit[0])
        if t is None:
            return []
        if t.done:
            self.duplicates += 1
            return []
        if len(t.part_ids) > 1:
            states = t.states
            if states is None:
                states = t.states = [None] * len(t.part_ids)
            elif states[hit[1]] is not None:
                self.duplicates += 1
                return []
            states[hit[1]] = status
            if status is _DELIVERED and not all(s is _DELIVERED for s in states):
                return []
        t.done = True
        self.awaiting -= 1
        err = receipt.err
        code = receipt.stat if not err or not err.strip("0") else f"{receipt.stat}:{err}"
        return [
            DeliveryReport(
                provider_id=t.provider_id,
                status=status,
                message_id=t.message_id,
                code=code[:64],
                done_at=receipt.done_at,
                gateway=self.gateway,
            )
        ]

    def expire(self, now: float | None = None) -> list[DeliveryReport]:
        """Report parked receipts whose wait is over as they are (in the form learnt last)."""
        order = self._parked_order
        if not order:
            return []
        now = self.clock() if now is None else now
        out: list[DeliveryReport] = []
        while order and (order[0].done or order[0].until <= now):
            p = order.popleft()
            if p.done:
                continue
            self._unpark(p)
            hit = self._find(p.forms[0], p.receipt.addr, strict=False)
            if hit is not None:
                out += self._fold(hit, p.receipt, p.status)
                continue
            self.unmatched += 1
            pid = self._learnt(p.forms[0])
            out.append(
                DeliveryReport(
                    provider_id=pid,
                    status=p.status,
                    code=p.receipt.stat[:64],
                    done_at=p.receipt.done_at,
                    gateway=self.gateway,
                )
            )
        return out

    @property
    def parked(self) -> int:
        """Receipts waiting for their submit answer."""
        return sum(1 for p in self._parked_order if not p.done)
