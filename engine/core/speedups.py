"""The batch kernels of the hot path: compiled (``engine/core/_speedups.c``) when built, else pure Python.

Six whole-batch functions carry the per-recipient loops that no chain of C-level builtins covers
in one pass: projecting a CSV block onto the wanted columns, telling clean Chinese mobiles from
the rest (and keying them), first-seen filtering for dedupe, claiming numbers in the table that
byte-range shards share (:mod:`engine.core.shared_keys`), grouping by carrier, and the text
lengths for billing. Each has a pure-Python twin here with exactly the same results;
``tests/property/test_speedups.py`` checks the two against each other on generated input.

The stages call them through this module (``speedups.first_seen(...)``), so :func:`use` switches
every stage at once: the load tests measure both, and ``PIGEON_PURE=1`` in the environment starts
the engine on the twins (to rule the extension out when chasing a bug). :data:`ACCELERATED` says
which are in use.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from operator import itemgetter
from types import ModuleType
from typing import Any

__all__ = [
    "ACCELERATED",
    "AVAILABLE",
    "claim_keys",
    "first_seen",
    "group_order",
    "phone_keys",
    "project_block",
    "sort_groups",
    "text_lengths",
    "use",
]


# ---- the pure-Python twins -------------------------------------------------------------------


@lru_cache(maxsize=64)
def _patterns(delimiter: str, ncols: int, positions: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """The LF and CRLF patterns capturing the columns at ``positions``, and the reordering."""
    order = sorted(positions)
    d = re.escape(delimiter)
    wanted = set(order)

    def pattern(last_excluded: str, end: str) -> re.Pattern[str]:
        fields = []
        for col in range(ncols):
            inner = f"[^{d}]*" if col < ncols - 1 else f"[^{d}{last_excluded}]*"
            fields.append(f"({inner})" if col in wanted else inner)
        return re.compile("^" + d.join(fields) + end, re.MULTILINE)

    # findall gives groups in column order; put them back in the requested order if needed (a
    # single position never needs it).
    perm = [order.index(p) for p in positions]
    reorder = itemgetter(*perm) if perm != list(range(len(perm))) else None
    return pattern(r"\n", "$"), pattern(r"\r", r"\r$"), reorder


def _py_project_block(
    block: str, delimiter: str, ncols: int, positions: tuple[int, ...]
) -> list[tuple[str, ...]] | None:
    """One tuple of the fields at ``positions`` per line of a quote-free ``block`` (whole lines,
    no final newline), or None when some line does not have exactly ``ncols`` fields or the line
    ends are mixed.

    One ``findall`` with a pattern capturing only the wanted columns: each match is anchored at a
    line start and a line end and matches never overlap, so as many matches as lines means every
    line is one match with exactly ``ncols`` fields.
    """
    if delimiter in "\r\n" or len(delimiter) != 1:
        raise ValueError("the delimiter must be one character, not a line end")
    if any(not 0 <= p < ncols for p in positions):
        raise ValueError("a position is outside the row")
    lf, crlf_pattern, reorder = _patterns(delimiter, ncols, positions)
    nl = block.count("\n")
    crlf = "\r" in block
    found: list[Any] = (crlf_pattern if crlf else lf).findall(block)
    if len(found) != nl + 1:
        return None
    # CRLF: each of the nl + 1 matches ends with \r, so no other \r may exist (a lone \r).
    if crlf and block.count("\r") != nl + 1:
        return None
    if len(positions) == 1:
        found = [(v,) for v in found]  # findall gives strings, not tuples, for one group
    elif reorder is not None:
        found = list(map(reorder, found))
    return found


_TIER2 = re.compile(r"^(?:\+86|0086|86)?(1[0-9]{10})$|^.*$", re.MULTILINE)
"""One result per line: the 11-digit national number of a decorated value, or ""."""
_TIER2_ONE = re.compile(r"(?:\+86|0086|86)?(1[0-9]{10})")
_FULL_WIDTH = str.maketrans("０１２３４５６７８９", "0123456789")


def _clean(p: str) -> bool:
    """An 11-digit ASCII Chinese mobile as it is (the fast path's test)."""
    # isascii() is O(1) in CPython: check it before the O(n) isdigit().
    return len(p) == 11 and p.isascii() and p.isdigit() and p[0] == "1"


def _py_phone_keys(numbers: list[str]) -> tuple[list[int], list[int]]:
    """Key the clean values (11 ASCII digits starting with 1) as ints; replace in ``numbers`` the
    values the cheap tiers read by their 11-digit national number, and key them; 0 for the rest,
    whose positions come back ("odd": for the full parser).

    The tiers, as :func:`engine.core.phone.parse_phone` reads those forms: spaces and dashes removed,
    then an optional ``+86``, ``0086`` or ``86`` before the 11 digits; Excel's ``13800138000.0``;
    11 full-width digits.
    """
    odd = [
        i for i, p in enumerate(numbers) if not (len(p) == 11 and p.isascii() and p.isdigit() and p[0] == "1")
    ]
    if not odd:
        return list(map(int, numbers)), odd
    # Second tier, for all the odd values at once: one regex pass over the lines gives each its
    # national number or "" (a value holding a newline would shift the lines: one by one then).
    vals = [numbers[i] for i in odd]
    stripped = "\n".join(vals).replace(" ", "").replace("-", "")
    nationals: list[str] = _TIER2.findall(stripped)
    if len(nationals) != len(vals):
        nationals = [
            m.group(1) if (m := _TIER2_ONE.fullmatch(v.replace(" ", "").replace("-", ""))) else ""
            for v in vals
        ]
    rest: list[int] = []
    for i, raw, national in zip(odd, vals, nationals, strict=True):
        if not national:
            # Third tier: Excel's 13800138000.0 and full-width digits.
            head, dot, zeros = raw.partition(".")
            if dot:
                if zeros and not zeros.strip("0") and _clean(head):
                    national = head
            elif len(raw) == 11 and raw[0] == "\uff11" and max(raw) <= "\uff19" and min(raw) >= "\uff10":
                national = raw.translate(_FULL_WIDTH)
        if national:
            numbers[i] = national
        else:
            rest.append(i)
    values = numbers.copy()
    for i in rest:
        values[i] = "0"
    return list(map(int, values)), rest


def _py_first_seen(seen: set[int], keys: list[int]) -> list[int]:
    """Add every key to ``seen``; the positions of the keys already there (or earlier in ``keys``)."""
    if seen.isdisjoint(keys):
        before = len(seen)
        seen.update(keys)
        if len(seen) - before == len(keys):
            return []  # no key seen before, none twice in the batch: two set operations in C
        seen.difference_update(keys)  # a key twice in this batch: redo it item by item
    dup: list[int] = []
    add = seen.add
    for i, k in enumerate(keys):
        if k in seen:
            dup.append(i)
        else:
            add(k)
    return dup


_MASK64 = (1 << 64) - 1


def _key_hash(x: int) -> int:
    """The slot a key starts probing at, before the mask: splitmix64's finalizer (as the C twin)."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _py_claim_keys(table: memoryview | bytearray, keys: list[int], rows: list[int]) -> list[int]:
    """Claim each ``keys[i]`` for ``rows[i]`` in ``table`` (``2^k`` slots of two int64, key and
    row, a key of 0 for an empty slot; linear probing from :func:`_key_hash`); the positions whose key
    another row holds (the same row again keeps it). Not atomic across processes, unlike the C
    twin: :class:`engine.core.shared_keys.SharedKeys` holds a lock around it."""
    if len(keys) != len(rows):
        raise ValueError("claim_keys(): keys and rows differ in length")
    view = memoryview(table).cast("B").cast("q")
    cap = len(view) // 2
    if cap == 0 or cap & (cap - 1) or len(view) != 2 * cap:
        raise ValueError("claim_keys(): the table must be 16 * 2^k bytes, 8-aligned")
    mask = cap - 1
    lost: list[int] = []
    for i, (key, row) in enumerate(zip(keys, rows, strict=True)):
        if key <= 0:
            raise ValueError("claim_keys(): a key must be positive")
        at = _key_hash(key) & mask
        for _ in range(cap):
            seen = view[2 * at]
            if seen == 0:
                view[2 * at], view[2 * at + 1] = key, row
                break
            if seen == key:
                if view[2 * at + 1] != row:
                    lost.append(i)
                break
            at = (at + 1) & mask
        else:
            raise OverflowError("claim_keys(): the table is full")
    return lost


def sort_groups(carriers: list[str]) -> tuple[list[int], list[tuple[str, int]]]:
    """The positions grouped by carrier (carriers sorted, positions ascending within each) and
    each group's (carrier, count), for any number of carriers: one stable sort."""
    return sorted(range(len(carriers)), key=carriers.__getitem__), sorted(Counter(carriers).items())


def _py_group_order(carriers: list[str]) -> tuple[list[int], list[tuple[str, int]]] | None:
    """:func:`sort_groups`, or None past 32 distinct carriers, as the compiled twin (whose
    counting sort keeps a fixed table) answers."""
    return None if len(set(carriers)) > 32 else sort_groups(carriers)


def _py_text_lengths(texts: list[str]) -> tuple[list[int], bool]:
    """``len()`` of each text, and whether every character is in the Basic Multilingual Plane."""
    joined = "".join(texts)
    # No character outside the BMP ⇔ UTF-16 takes exactly two bytes per character.
    return list(map(len, texts)), len(joined.encode("utf-16-le", "surrogatepass")) == 2 * len(joined)


# ---- selection -------------------------------------------------------------------------------

project_block: Callable[[str, str, int, tuple[int, ...]], list[tuple[str, ...]] | None]
phone_keys: Callable[[list[str]], tuple[list[int], list[int]]]
first_seen: Callable[[set[int], list[int]], list[int]]
claim_keys: Callable[[memoryview | bytearray, list[int], list[int]], list[int]]
group_order: Callable[[list[str]], tuple[list[int], list[tuple[str, int]]] | None]
text_lengths: Callable[[list[str]], tuple[list[int], bool]]

_compiled: ModuleType | None
try:
    from engine.core import _speedups
except ImportError:  # built without a C compiler: the twins above serve
    _compiled = None
else:
    _compiled = _speedups

AVAILABLE: bool = _compiled is not None
"""Whether the compiled kernels were built with this install."""
ACCELERATED: bool = False
"""Whether the compiled kernels are in use now (see :func:`use`)."""

_NAMES: Sequence[str] = (
    "project_block",
    "phone_keys",
    "first_seen",
    "claim_keys",
    "group_order",
    "text_lengths",
)


def use(accelerated: bool) -> bool:
    """Switch every stage to the compiled kernels (when built) or to the pure-Python twins;
    returns whether the compiled ones are now in use."""
    global ACCELERATED
    source: Any = _compiled if accelerated and _compiled is not None else None
    for name in _NAMES:
        globals()[name] = getattr(source, name) if source is not None else globals()[f"_py_{name}"]
    ACCELERATED = source is not None
    return ACCELERATED


use(os.environ.get("PIGEON_PURE", "") in ("", "0"))
