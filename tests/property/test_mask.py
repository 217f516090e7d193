"""Masking (``engine.core.phone.mask``): one style for every form a number is written in, and never more
of a number than the first three and last four digits, whatever the input."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from engine.core.phone import mask, parse_phone

FULL_WIDTH = str.maketrans("0123456789+", "０１２３４５６７８９＋")
SEPARATORS = [" ", "-", "\u3000", "\xa0", ".", "－", ""]

mobiles = st.from_regex(r"\A1[3-9][0-9]{9}\Z")
# An E.164 number outside China: a country code other than 86 and 10 to 14 digits in all.
e164_digits = st.from_regex(r"\A[1-9][0-9]{9,13}\Z").filter(lambda d: not d.startswith("86"))


@st.composite
def written(draw: st.DrawFn, digits: str, prefixes: list[str]) -> str:
    """``digits`` as a merchant might write them: a prefix, separators, full-width digits."""
    cuts = sorted(draw(st.lists(st.integers(1, len(digits) - 1), max_size=3, unique=True)))
    parts, last = [], 0
    for c in [*cuts, len(digits)]:
        parts.append(digits[last:c])
        last = c
    body = draw(st.sampled_from(SEPARATORS)).join(parts)
    text = draw(st.sampled_from(prefixes)) + body
    if draw(st.booleans()):
        text = text.translate(FULL_WIDTH)
    return " " * draw(st.integers(0, 2)) + text + " " * draw(st.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(st.data(), mobiles)
def test_every_written_form_of_a_chinese_mobile_masks_alike(data: st.DataObject, number: str) -> None:
    form = data.draw(written(number, ["", "+86", "+86 ", "0086", "0086 ", "86", "(+86) ", "'"]))
    assert parse_phone(form).national == number  # it is a form Pigeon reads as this number
    assert mask(form) == mask(number) == number[:3] + "****" + number[-4:]
    assert mask(number + ".0") == mask(number)  # Excel's float


@settings(max_examples=300, deadline=None)
@given(st.data(), e164_digits)
def test_every_written_form_of_an_international_number_masks_alike(data: st.DataObject, digits: str) -> None:
    form = data.draw(written(digits, ["+", "+ ", "00", "00 "]))
    want = "+" + digits[:2] + "*" * (len(digits) - 6) + digits[-4:]
    assert mask(form) == mask("+" + digits) == want


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=24),
        st.text(alphabet="0123456789+-  .()'０１２３４５６７８９＋eE", max_size=24),
        mobiles,
        e164_digits.map(lambda d: "+" + d),
    )
)
def test_a_masked_value_never_shows_more_than_three_and_four_digits(value: str) -> None:
    out = mask(value)
    assert re.fullmatch(r"\+?[0-9*]*", out), out  # nothing but digits, stars and a leading +
    shown = sum(ch.isdigit() for ch in out)
    assert shown <= 7
    assert not re.search(r"[0-9]{5}", out)  # never more than four digits in a row
    if shown:
        assert out.count("*") >= 4  # at least four digits hidden whenever any is shown
        assert re.fullmatch(r"\+?[0-9]{2,3}\*{4,}[0-9]{4}", out), out
    if not any(ch.isdigit() for ch in value.translate(str.maketrans("０１２３４５６７８９", "0123456789"))):
        assert out == "*" * len(value.strip())  # not a number: nothing of it, one star a character
