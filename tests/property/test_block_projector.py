"""The CSV reader's one-pass block projector agrees with splitting line by line, or declines."""

from __future__ import annotations

from operator import itemgetter

import pytest
from hypothesis import given, strategies as st

from plugins.source_file._project import BlockProjector

pytestmark = pytest.mark.usefixtures("kernels")  # on the compiled kernels and the pure twins

# Field text without the delimiter (but with spaces, \r, CJK and an occasional \n inside a
# "line", so that some generated lines have the wrong width or mixed line ends).
_FIELD = st.text(alphabet=st.sampled_from("ab 1张\r\n;"), max_size=4)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[str, int, list[int], str]:
    delim = draw(st.sampled_from([",", "\t", "|"]))
    ncols = draw(st.integers(2, 6))
    positions = draw(st.lists(st.integers(0, ncols - 1), min_size=2, max_size=ncols, unique=True))
    rows = draw(
        st.lists(
            st.lists(_FIELD.filter(lambda f: delim not in f), min_size=ncols - 1, max_size=ncols + 1),
            min_size=1,
            max_size=6,
        )
    )
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    block = eol.join(delim.join(r) for r in rows) + ("\r" if eol == "\r\n" else "")
    return block, ncols, positions, delim


@given(blocks())
def test_projector_matches_split_or_declines(case: tuple[str, int, list[int], str]) -> None:
    block, ncols, positions, delim = case
    got = BlockProjector(delim, ncols, positions).project(block)
    nl = block.count("\n")
    if block.endswith("\r") and block.count("\r") == nl + 1 and block.count("\r\n") == nl:
        lines = block[:-1].split("\r\n")  # uniform CRLF, the last line's \r included
    elif "\r" not in block:
        lines = block.split("\n")
    else:
        assert got is None  # mixed line ends: the caller's own paths handle them
        return
    fields = [line.split(delim) for line in lines]
    if all(len(f) == ncols for f in fields):
        assert got == [itemgetter(*positions)(f) for f in fields]
    else:
        assert got is None


def test_projector_reorders_to_the_requested_order() -> None:
    p = BlockProjector(",", 4, [3, 0, 2])
    assert p.project("a,b,c,d\ne,f,g,h") == [("d", "a", "c"), ("h", "e", "g")]
    assert p.project("a,b,c,d\r\ne,f,g,h\r") == [("d", "a", "c"), ("h", "e", "g")]
    assert p.project("a,b,c,d\ne,f,g") is None
    assert p.project("a,b,c,d\n\ne,f,g,h") is None  # a blank line
    assert p.project("a,b,c,d\r\ne,f,g,h") is None  # the last line without its \r: mixed
