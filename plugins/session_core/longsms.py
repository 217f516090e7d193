"""Long messages on binary protocols: split by the engine's billed-part rules, encode, concatenate.

The split is :func:`engine.core.sms.split` (the rule the engine bills by): a part never cuts a
surrogate pair or a GSM-7 escape. Each part is encoded as GSM-7 (one septet per octet, or packed
seven bits at a time), ASCII or UCS-2 big-endian (UTF-16: a character outside the BMP is its
surrogate pair), and carries a concatenation header: a UDH ``05 00 03 ref total seq`` (8-bit
reference, 153 GSM-7 / 67 UCS-2 a part), ``06 08 04 refH refL total seq`` (16-bit reference,
152 / 66), or nothing when the protocol carries the numbers beside the text (SMPP ``sar_*``
TLVs). GSM-7 packed after a UDH starts on a septet boundary (fill bits). MO parts are put back
together by :class:`Reassembler`.
"""

from __future__ import annotations

import random
from typing import Final, Literal, NamedTuple

from engine.core.sms import GSM7_BASIC, GSM7_EXTENSION, MAX_PARTS, encoding_of, split

__all__ = [
    "GSM7_TABLE",
    "Concat",
    "Reassembler",
    "Segmenter",
    "Segments",
    "TooLong",
    "concat_udh",
    "decode_gsm7",
    "encode_gsm7",
    "pack_septets",
    "read_udh",
    "unpack_septets",
]

GSM7_TABLE: Final = GSM7_BASIC[:0x1B] + "\x1b" + GSM7_BASIC[0x1B:]
"""The GSM 03.38 basic table in septet order (0x1B escapes to the extension table)."""

GSM7_EXT_CODES: Final = dict(
    zip(GSM7_EXTENSION, (0x0A, 0x14, 0x28, 0x29, 0x2F, 0x3C, 0x3D, 0x3E, 0x40, 0x65), strict=True)
)
"""Extension characters → the septet after the escape (``\\f ^ { } \\ [ ~ ] | €``)."""

_ENCODE: Final[dict[int, str]] = {ord(c): chr(i) for i, c in enumerate(GSM7_TABLE) if i != 0x1B}
_ENCODE.update({ord(c): "\x1b" + chr(code) for c, code in GSM7_EXT_CODES.items()})
_EXT_DECODE: Final = {code: c for c, code in GSM7_EXT_CODES.items()}

UCS2: Final = "utf-16-be"
"""UCS-2 as carriers use it: big-endian UTF-16 (astral characters as surrogate pairs)."""


class TooLong(ValueError):
    """A message needs more parts than a concatenation header can number (255)."""


def encode_gsm7(text: str) -> bytes:
    """GSM-7 septets, one per octet (extension characters as escape + code); text must be GSM-7."""
    return text.translate(_ENCODE).encode("latin-1")


def decode_gsm7(septets: bytes) -> str:
    """Text of unpacked GSM-7 septets (an unknown escape reads as a space, as 03.38 says)."""
    out: list[str] = []
    table = GSM7_TABLE
    esc = False
    for b in septets:
        b &= 0x7F
        if esc:
            out.append(_EXT_DECODE.get(b, " "))
            esc = False
        elif b == 0x1B:
            esc = True
        else:
            out.append(table[b])
    return "".join(out)


def pack_septets(septets: bytes, fill: int = 0) -> bytes:
    """Pack septets seven bits each, least significant first, after ``fill`` zero bits."""
    value = 0
    shift = fill
    for s in septets:
        value |= (s & 0x7F) << shift
        shift += 7
    return value.to_bytes((shift + 7) // 8, "little")


def unpack_septets(data: bytes, count: int | None = None, fill: int = 0) -> bytes:
    """The septets packed in ``data`` after ``fill`` bits (``count``: how many; default all whole ones)."""
    value = int.from_bytes(data, "little") >> fill
    n = (len(data) * 8 - fill) // 7 if count is None else count
    return bytes((value >> (7 * i)) & 0x7F for i in range(n))


class Concat(NamedTuple):
    """Where a part sits in its message: reference, total parts, this part's number (1-based)."""

    ref: int
    total: int
    seq: int


def concat_udh(ref: int, total: int, seq: int, wide: bool = False) -> bytes:
    """The concatenation UDH (length byte included): 8-bit reference, or 16-bit when ``wide``."""
    if wide:
        return bytes((6, 0x08, 4, (ref >> 8) & 0xFF, ref & 0xFF, total, seq))
    return bytes((5, 0x00, 3, ref & 0xFF, total, seq))


def read_udh(payload: bytes) -> tuple[Concat | None, int]:
    """The concatenation element of a UDH at the start of ``payload`` and the UDH's length in octets.

    Other information elements are skipped; a malformed header reads as no concatenation.
    """
    if not payload:
        return None, 0
    n = payload[0] + 1
    if n > len(payload):
        return None, 0
    concat = None
    at = 1
    while at + 2 <= n:
        iei, ln = payload[at], payload[at + 1]
        body = payload[at + 2 : at + 2 + ln]
        if len(body) < ln:
            break
        if iei == 0x00 and ln == 3:
            concat = Concat(body[0], body[1], body[2])
        elif iei == 0x08 and ln == 4:
            concat = Concat((body[0] << 8) | body[1], body[2], body[3])
        at += 2 + ln
    return concat, n


def _fill(udh_len: int) -> int:
    """Fill bits after a UDH of ``udh_len`` octets so packed GSM-7 starts on a septet boundary."""
    return (7 - (udh_len * 8) % 7) % 7


GsmMode = Literal["unpacked", "packed", "ascii", "never"]
"""How GSM-7 text goes: ``unpacked`` (one septet an octet, SMPP's usual), ``packed``, ``ascii``
(as ASCII bytes when the text is ASCII: CMPP ``Msg_Fmt`` 0), ``never`` (always UCS-2)."""
ConcatMode = Literal["udh8", "udh16", "sar"]


class Segments(NamedTuple):
    """A message ready for its PDUs."""

    coding: Literal["gsm7", "ascii", "ucs2"]
    payloads: list[bytes]
    """One per part; with a UDH in front when ``udhi``."""
    concat: list[Concat] | None
    """Per part, for a message of several parts (None for a single part)."""
    udhi: bool
    """Whether the payloads start with a UDH (SMPP esm_class 0x40, CMPP TP_udhi 1)."""


class Segmenter:
    """Turns texts into the payloads of their parts, numbering long messages with fresh references.

    :param gsm7: see :data:`GsmMode`.
    :param concat: ``udh8``/``udh16`` put a UDH in each part; ``sar`` leaves the payload bare
        (the caller adds the protocol's fields from :attr:`Segments.concat`).
    """

    def __init__(
        self, gsm7: GsmMode = "unpacked", concat: ConcatMode = "udh8", seed: int | None = None
    ) -> None:
        self.gsm7 = gsm7
        self.concat = concat
        self._ref = random.Random(seed).randrange(1, 0xFFFF if concat != "udh8" else 0xFF)

    def _next_ref(self) -> int:
        top = 0xFF if self.concat == "udh8" else 0xFFFF
        self._ref = self._ref + 1 if self._ref < top else 1
        return self._ref

    def segments(self, text: str) -> Segments:
        """Split and encode ``text``. Raises :class:`TooLong` above 255 parts."""
        gsm7 = self.gsm7
        enc = encoding_of(text)
        if enc == "gsm7" and (gsm7 == "never" or (gsm7 == "ascii" and not text.isascii())):
            enc = "ucs2"
        # One part (most messages): the encoded length is the billed length, nothing to split.
        if enc == "ucs2":
            if len(text) <= 70:
                whole = text.encode(UCS2)
                if len(whole) <= 140:
                    return Segments("ucs2", [whole], None, False)
        elif gsm7 == "unpacked" and len(text) <= 160:
            whole = encode_gsm7(text)
            if len(whole) <= 160:
                return Segments("gsm7", [whole], None, False)
        coding: Literal["gsm7", "ascii", "ucs2"] = (
            "ucs2" if enc == "ucs2" else "ascii" if gsm7 == "ascii" else "gsm7"
        )
        wide = self.concat == "udh16"
        per = (152 if enc == "gsm7" else 66) if wide else None
        pieces = split(text, enc, per)
        if coding == "ucs2":
            encoded = [p.encode(UCS2) for p in pieces]
        elif coding == "ascii":
            encoded = [p.encode("ascii") for p in pieces]
        else:
            encoded = [encode_gsm7(p) for p in pieces]
        packed = coding == "gsm7" and gsm7 == "packed"
        total = len(pieces)
        if total == 1:
            return Segments(coding, [pack_septets(encoded[0]) if packed else encoded[0]], None, False)
        if total > MAX_PARTS:
            raise TooLong(f"{total} parts: at most {MAX_PARTS} can be numbered")
        ref = self._next_ref()
        concat = [Concat(ref, total, i) for i in range(1, total + 1)]
        if self.concat == "sar":
            payloads = [pack_septets(e) if packed else e for e in encoded]
            return Segments(coding, payloads, concat, False)
        payloads = []
        for c, e in zip(concat, encoded, strict=True):
            udh = concat_udh(ref, total, c.seq, wide)
            payloads.append(udh + (pack_septets(e, _fill(len(udh))) if packed else e))
        return Segments(coding, payloads, concat, True)


def decode_payload(
    payload: bytes, coding: str, *, udhi: bool, packed: bool = False
) -> tuple[Concat | None, str]:
    """The concatenation info and text of one received part.

    ``coding`` is ``gsm7``, ``ascii``, ``latin1``, ``ucs2``, ``gbk`` or ``binary`` (hex text).
    """
    concat = None
    body = payload
    udh_len = 0
    if udhi:
        concat, udh_len = read_udh(payload)
        body = payload[udh_len:]
    if coding == "gsm7":
        if packed:
            fill = _fill(udh_len) if udh_len else 0
            bits = len(body) * 8 - fill
            septets = unpack_septets(body, bits // 7, fill)
            if bits % 7 == 0 and septets.endswith(b"\x00"):
                septets = septets[:-1]  # 7 spare bits read as a septet: padding, not an '@'
            return concat, decode_gsm7(septets)
        return concat, decode_gsm7(body)
    if coding == "ucs2":
        return concat, body.decode(UCS2, errors="replace")
    if coding == "gbk":
        return concat, body.decode("gb18030", errors="replace")
    if coding == "latin1":
        return concat, body.decode("latin-1")
    if coding == "ascii":
        return concat, body.decode("ascii", errors="replace")
    return concat, body.hex()


class Reassembler:
    """Puts MO parts back together: by (source, reference, total), each part number kept once.

    :meth:`add` returns the whole text when the last missing part arrives; a duplicate of a part
    is dropped, also for ``done_ttl`` seconds after its message was completed. Parts of a message
    never completed are forgotten after ``ttl`` seconds.
    """

    def __init__(self, ttl: float = 600.0, limit: int = 10_000, done_ttl: float = 120.0) -> None:
        self.ttl = ttl
        self.limit = limit
        self.done_ttl = done_ttl
        self._open: dict[tuple[str, int, int], tuple[float, dict[int, str]]] = {}
        self._done: dict[tuple[str, int, int], float] = {}
        self.duplicates = 0

    def add(self, source: str, concat: Concat, text: str, now: float) -> str | None:
        """Record one part; the whole message's text once every part is in."""
        key = (source, concat.ref, concat.total)
        done = self._done.get(key)
        if done is not None:
            if now - done <= self.done_ttl:
                self.duplicates += 1
                return None
            del self._done[key]
        entry = self._open.get(key)
        if entry is None:
            if len(self._open) >= self.limit:
                self.expire(now, force=True)
            entry = (now, {})
            self._open[key] = entry
        parts = entry[1]
        if concat.seq in parts or not 1 <= concat.seq <= concat.total:
            self.duplicates += 1
            return None
        parts[concat.seq] = text
        if len(parts) < concat.total:
            return None
        del self._open[key]
        self._done[key] = now
        if len(self._done) > self.limit:
            self._done = {k: t for k, t in self._done.items() if now - t <= self.done_ttl}
        return "".join(parts[i] for i in range(1, concat.total + 1))

    def expire(self, now: float, force: bool = False) -> int:
        """Forget messages older than ``ttl`` (with ``force``, at least the oldest); how many."""
        old = [k for k, (t, _) in self._open.items() if now - t > self.ttl]
        if force and not old and self._open:
            old = [next(iter(self._open))]
        for k in old:
            del self._open[k]
        return len(old)

    def __len__(self) -> int:
        return len(self._open)
