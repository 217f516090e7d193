"""Split and project a whole quote-free CSV block in one regular-expression pass.

``str.split`` per line allocates every field of every row and a list per row, then a projection
keeps a few fields. One ``findall`` over the block with a pattern that captures only the wanted
columns allocates just those strings and one tuple per row, with no Python-level work per row;
inner fields are ``[^,]*`` (the regex engine's fastest loop, a single-character exclusion).

Safety does not rest on the pattern alone: each match is anchored at a line start (``^``) and a
line end (``$``), and matches never overlap, so when the block yields exactly as many matches as it
has lines, every line is one match with exactly the header's number of fields. Otherwise the
caller falls back to splitting line by line (rows of the wrong width, blank lines).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import itemgetter

__all__ = ["BlockProjector"]


class BlockProjector:
    """Projects quote-free blocks of ``ncols``-field lines onto the columns at ``positions``.

    :meth:`project` returns tuples of the wanted fields in the order of ``positions`` (as
    ``operator.itemgetter(*positions)`` over the split line would), or None when the block is not
    uniform (the caller then splits it line by line).
    """

    __slots__ = ("_crlf", "_lf", "_reorder")

    def __init__(self, delimiter: str, ncols: int, positions: Sequence[int]) -> None:
        order = sorted(positions)
        d = re.escape(delimiter)
        wanted = set(order)

        def pattern(last_excluded: str, end: str) -> re.Pattern[str]:
            fields = []
            for col in range(ncols):
                inner = f"[^{d}]*" if col < ncols - 1 else f"[^{d}{last_excluded}]*"
                fields.append(f"({inner})" if col in wanted else inner)
            return re.compile("^" + d.join(fields) + end, re.MULTILINE)

        self._lf = pattern(r"\n", "$")
        self._crlf = pattern(r"\r", r"\r$")
        # findall gives groups in column order; put them back in the requested order if needed.
        perm = [order.index(p) for p in positions]
        self._reorder = itemgetter(*perm) if perm != list(range(len(perm))) else None

    @staticmethod
    def usable(delimiter: str, ncols: int, positions: Sequence[int]) -> bool:
        """Whether a projector applies: two or more wanted columns (findall then gives tuples),
        distinct, and a delimiter that is not a line end."""
        return ncols >= 2 and len(set(positions)) == len(positions) >= 2 and delimiter not in "\r\n"

    def project(self, block: str) -> list[tuple[str, ...]] | None:
        """The projected rows of ``block`` (whole lines, no final newline, no quote character),
        or None if some line does not have exactly ``ncols`` fields or line ends are mixed."""
        nl = block.count("\n")
        crlf = "\r" in block
        rows: list[tuple[str, ...]] = (self._crlf if crlf else self._lf).findall(block)
        if len(rows) != nl + 1:
            return None
        # CRLF: each of the nl + 1 matches ends with \r, so no other \r may exist (a lone \r).
        if crlf and block.count("\r") != nl + 1:
            return None
        if self._reorder is not None:
            rows = list(map(self._reorder, rows))
        return rows
