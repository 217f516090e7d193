"""The compiled batch kernels give exactly what their pure-Python twins give, on generated input."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, strategies as st

from engine.core import speedups

if speedups.AVAILABLE:
    from engine.core import _speedups as compiled
elif os.environ.get("PIGEON_REQUIRE_SPEEDUPS"):  # CI (.ci/run): the extension must be built
    pytest.fail("engine.core._speedups is not built: pip install -e . with a C compiler", pytrace=False)
else:
    pytest.skip("engine.core._speedups is not built (no C compiler at install)", allow_module_level=True)

# Text of every storage width (ASCII, Latin-1, CJK, an emoji) and the characters that matter to a
# CSV line: delimiters, \r and \n, so that some generated lines have the wrong width or mixed ends.
_FIELD = st.text(alphabet=st.sampled_from("ab 1é张😀\r\n,;\t"), max_size=5)


@st.composite
def blocks(draw: st.DrawFn) -> tuple[str, str, int, tuple[int, ...]]:
    delim = draw(st.sampled_from([",", ";", "\t", "张"]))
    ncols = draw(st.integers(1, 6))
    positions = tuple(draw(st.lists(st.integers(0, ncols - 1), min_size=1, max_size=ncols, unique=True)))
    rows = draw(
        st.lists(st.lists(_FIELD, min_size=max(ncols - 1, 0), max_size=ncols + 1), min_size=1, max_size=6)
    )
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    block = eol.join(delim.join(r) for r in rows) + ("\r" if eol == "\r\n" else "")
    return block, delim, ncols, positions


@given(blocks())
def test_project_block_agrees(case: tuple[str, str, int, tuple[int, ...]]) -> None:
    assert compiled.project_block(*case) == speedups._py_project_block(*case)


def test_project_block_on_each_shape() -> None:
    for f in (compiled.project_block, speedups._py_project_block):
        assert f("a,b,c\nd,e,f", ",", 3, (2, 0)) == [("c", "a"), ("f", "d")]
        assert f("a,b,c\r\nd,e,f\r", ",", 3, (1,)) == [("b",), ("e",)]
        assert f("a,b,c\r\nd,e,f", ",", 3, (1,)) is None  # the last line without its \r
        assert f("a,b\r,c\r", ",", 3, (1,)) is None  # a lone \r inside a field
        assert f("a,b,c\nd,e", ",", 3, (0,)) is None  # a short row
        assert f("a,b,c\nd,e,f,g", ",", 3, (0,)) is None  # a long row
        assert f("a,b,c\n\nd,e,f", ",", 3, (0,)) is None  # a blank line
        assert f("", ",", 2, (0,)) is None
        assert f("张三,😀,x", ",", 3, (1, 0)) == [("😀", "张三")]  # 4-byte storage
        assert f(",,", ",", 3, (0, 1, 2)) == [("", "", "")]


@pytest.mark.parametrize(
    "args",
    [
        (b"a,b", ",", 2, (0,)),  # bytes, not str
        ("a,b", ",,", 2, (0,)),  # a two-character delimiter
        ("a,b", "\n", 2, (0,)),  # a line end as delimiter
        ("a,b", ",", 2, (2,)),  # a position past the row
        ("a,b", ",", 2, (-1,)),
    ],
)
def test_project_block_refuses_bad_arguments(args: tuple[Any, ...]) -> None:
    for f in (compiled.project_block, speedups._py_project_block):
        with pytest.raises((TypeError, ValueError)):
            f(*args)


_FW = str.maketrans("0123456789", "０１２３４５６７８９")
_PHONE = st.one_of(
    st.from_regex(r"\A1[0-9]{10}\Z"),
    st.from_regex(r"\A(\+86|0086|86)?[ -]?1[0-9]{2}[ -]?[0-9]{4}[ -]?[0-9]{4}(\.0{0,2})?\Z"),
    st.from_regex(r"\A1[0-9]{10}\Z").map(lambda n: n.translate(_FW)),
    st.text(alphabet=st.sampled_from("0123456789１+- .a\n"), max_size=16),
    st.sampled_from(
        [
            "",
            "1380013800",
            "138001380000",
            "23800138000",
            "1380013800a",
            "+86 138\n0013 8000",
            "13800138000.",
            "13800138000.0.0",
            "８６１３８００１３８０００",
            "+44 20 7946 0958",
            "008613800138000",
        ]
    ),
)


@given(st.lists(_PHONE, max_size=40))
def test_phone_keys_agree(numbers: list[str]) -> None:
    py_numbers = numbers.copy()
    keys, odd = compiled.phone_keys(numbers)
    assert (keys, odd) == speedups._py_phone_keys(py_numbers)
    assert numbers == py_numbers  # the same values read in place
    rest = set(odd)
    assert all(keys[i] == int(n) and len(n) == 11 for i, n in enumerate(numbers) if i not in rest)


def test_phone_keys_reads_the_cheap_forms_in_place() -> None:
    for f in (compiled.phone_keys, speedups._py_phone_keys):
        numbers = [
            "13800138000",
            "+86 138-0013-8000",
            "8613800138001",
            "13800138002.00",
            "１３８００１３８００３",
            "x",
        ]
        assert f(numbers) == ([13800138000, 13800138000, 13800138001, 13800138002, 13800138003, 0], [5])
        assert numbers == ["13800138000", "13800138000", "13800138001", "13800138002", "13800138003", "x"]


@given(st.sets(st.integers(0, 30)), st.lists(st.integers(0, 30), max_size=40))
def test_first_seen_agrees(seen: set[int], keys: list[int]) -> None:
    seen_py = set(seen)
    assert compiled.first_seen(seen, keys) == speedups._py_first_seen(seen_py, keys)
    assert seen == seen_py == seen_py | set(keys)


@given(st.lists(st.sampled_from(["cm", "cu", "ct", "cbn", "intl", "".join(["c", "m"])]), max_size=60))
def test_group_order_agrees(carriers: list[str]) -> None:
    # "".join(["c", "m"]) is equal to "cm" but another object: grouping goes by value
    assert compiled.group_order(carriers) == speedups._py_group_order(carriers)


def test_group_order_declines_past_32_carriers() -> None:
    carriers = [f"c{i}" for i in range(33)]
    assert compiled.group_order(carriers) is None
    assert speedups._py_group_order(carriers) is None
    assert compiled.group_order([f"c{i}" for i in range(32)]) is not None


@given(st.lists(st.text(max_size=8), max_size=20))
def test_text_lengths_agree(texts: list[str]) -> None:
    assert compiled.text_lengths(texts) == speedups._py_text_lengths(texts)


@pytest.mark.parametrize(
    ("name", "arg"),
    [("phone_keys", [138]), ("group_order", ["cm", 1]), ("text_lengths", [b"x"]), ("phone_keys", ("1",))],
)
def test_kernels_refuse_what_is_not_a_list_of_str(name: str, arg: object) -> None:
    with pytest.raises(TypeError):
        getattr(compiled, name)(arg)


def test_use_switches_every_kernel() -> None:
    before = speedups.ACCELERATED
    try:
        assert speedups.use(False) is False
        assert speedups.first_seen is speedups._py_first_seen
        assert speedups.use(True) is True
        assert speedups.first_seen is compiled.first_seen
    finally:
        speedups.use(before)


@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 60), st.integers(1, 4)), max_size=40),
        min_size=1,
        max_size=5,
    )
)
def test_claim_keys_agrees(batches: list[list[tuple[int, int]]]) -> None:
    """Batch after batch on one small table (1,024 slots: keys 1–60 collide in probing as much as
    they can), both twins: the same losers, and the same table bytes afterwards."""
    a, b = bytearray(16 * 1024), bytearray(16 * 1024)
    for batch in batches:
        keys, rows = [k for k, _ in batch], [r for _, r in batch]
        assert compiled.claim_keys(a, keys, rows) == speedups._py_claim_keys(b, keys, rows)
    assert a == b


def test_claim_keys_refuses_what_it_cannot_hold() -> None:
    for claim in (compiled.claim_keys, speedups._py_claim_keys):
        with pytest.raises(ValueError, match="16 \\* 2\\^k bytes"):
            claim(bytearray(16 * 1000), [1], [2])  # not a power of two
        with pytest.raises(ValueError, match="positive"):
            claim(bytearray(16), [0], [2])  # 0 marks an empty slot
        with pytest.raises(OverflowError):
            claim(bytearray(16 * 2), [1, 2, 3], [2, 3, 4])  # two slots, three keys
